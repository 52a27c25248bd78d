import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { describe, expect, it } from 'vitest';
import { lineWithin } from './helpers/processes.js';

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

