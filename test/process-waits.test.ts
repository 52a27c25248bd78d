import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { afterAll, describe, expect, it } from 'vitest';
import { exitWithin, lineWithin, spawnGroup, stopProcess } from './helpers/processes.js';
import { until } from './helpers/wait.js';

/** A node child running `code`, its stdout piped, with what `lineWithin` takes. */
function node(code: string) {
  const child = spawn(process.execPath, ['-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = once(child, 'close');
  const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
  return { child, exited, lines };
}

/** The test helpers' bounded waits on a child process: each fails naming what never happened, and leaves nothing running. */
describe('bounded waits on a child process', () => {
  it("lineWithin answers the child's next line", async () => {
    const p = node("process.stdout.write('ready\\n'); setTimeout(() => {}, 100)");
    expect(await lineWithin(p, p.lines, 30_000, 'the ready line')).toBe('ready');
    await p.exited;
  });

  it('lineWithin on a child that never writes its line: fails within the bound naming the line, the child killed', async () => {
    // Alive and silent, as a fixture stuck before its `ready` (Redis not answering) is.
    const p = node('setInterval(() => {}, 1000)');
    await expect(lineWithin(p, p.lines, 300, "the stuck child's ready line")).rejects.toThrow(/^not within 300 ms: the stuck child's ready line \(pid \d+: killed\)$/);
    expect(p.child.signalCode).toBe('SIGKILL');
  });

  it('lineWithin on a child that exits first: fails at once naming the line', async () => {
    const p = node('process.exit(3)');
    await expect(lineWithin(p, p.lines, 30_000, 'the ready line')).rejects.toThrow(/^the ready line: the process closed its output first \(pid \d+: killed\)$/);
    expect(p.child.exitCode).toBe(3);
  });
});

/**
 * Whether `pid` still runs: not gone, and not a zombie (a killed orphan not yet reaped by whichever ancestor adopted
 * it, which `kill(pid, 0)` would count as alive).
 */
function runs(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.[0] !== 'Z';
  } catch {
    return false;
  }
}

/**
 * A child that starts a process of its own, both hanging, as `npm run worker` starts agentq (through a shell) and
 * agentq's drain may hang: the grandchild shares the child's stdout, as agentq shares npm's.
 */
const TREE = `
  const { spawn } = require('node:child_process');
  const g = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'inherit' });
  process.stdout.write(JSON.stringify({ grandchild: g.pid }) + '\\n');
  setInterval(() => {}, 1000);
`;

describe('a bounded wait that gives up on a child leading a process group (npm and the agentq it started)', () => {
  const grandchildren: number[] = [];
  afterAll(() => {
    for (const pid of grandchildren) if (runs(pid)) process.kill(pid, 'SIGKILL');
  });

  it('exitWithin kills the whole group: the grandchild is gone too, and the child closes', async () => {
    const p = spawnGroup(process.execPath, ['-e', TREE], {});
    const grandchild = (await p.waitForLog((l) => typeof l.grandchild === 'number', 30_000)).grandchild as number;
    grandchildren.push(grandchild);
    expect(runs(grandchild)).toBe(true);
    // Until 2026-12-07 the child alone (npm) was SIGKILLed: the grandchild (agentq) ran on, holding the child's
    // stdout open, so the child never closed either ("still not closed ... after SIGKILL").
    await expect(exitWithin(p, 300, 'the tree to exit')).rejects.toThrow(/^not within 300 ms: the tree to exit \(pid \d+: killed\)$/);
    await until('the grandchild to be gone', () => !runs(grandchild), 10_000);
  });

  it('stopProcess of a child gone before what it started: the group is ended all the same', async () => {
    const p = spawnGroup(process.execPath, ['-e', `${TREE}; process.on('SIGTERM', () => process.exit(0))`], {});
    const grandchild = (await p.waitForLog((l) => typeof l.grandchild === 'number', 30_000)).grandchild as number;
    grandchildren.push(grandchild);
    // The child exits on SIGTERM and leaves the grandchild running (npm gone, agentq not): SIGKILL for the group.
    await stopProcess(p, 300);
    // Its output closes as the kernel tears it down, a moment before /proc shows it gone: waited for, bounded.
    await until('the grandchild to be gone', () => !runs(grandchild), 10_000);
    await until('the child to be gone', () => !runs(p.child.pid!), 10_000);
  });
});
