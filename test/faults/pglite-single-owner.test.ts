import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { figure } from '../helpers/faults.js';
import { stopProcess, watch, type AgentqProcess } from '../helpers/processes.js';

const FIXTURE = fileURLToPath(new URL('../fixtures/shared-db-process.ts', import.meta.url));
const ROUNDS = 12;
const USING_OTHER = 'using the embedded PGlite owned by another local agentq process';

/**
 * Embedded PGlite has one owner per data dir. Two real processes open the same data dir at the same instant
 * (the race `npm run api` + `npm run worker` started together runs, without the jitter of two process
 * start-ups: both get the go in one tick), 12 times; each time exactly one starts PGlite, the other connects
 * through its socket, and what the second writes the first reads. Then a SIGKILLed owner's lock is taken over
 * by one of two freshly started processes. Last, a process that was connected through an owner SIGKILLed
 * under it: its next query goes to the process that took over, or makes it the owner when none did.
 */
describe('embedded PGlite: exactly one owning process per data dir', () => {
  const dirs: string[] = [];
  const procs: AgentqProcess[] = [];
  afterAll(async () => {
    await Promise.all(procs.map((p) => stopProcess(p, 2000)));
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  const newDir = () => {
    const d = mkdtempSync(join(tmpdir(), 'agentq-owner-'));
    dirs.push(d);
    return d;
  };
  const spawnFixture = (dir: string, openAtOnce = false) => {
    // The pool's connect bound as a hang's, not production's 10 s: a query that finds its owner gone waits for the
    // takeover (PGlite booting the data dir and recovering it after a SIGKILL), which a slow or loaded machine has
    // taken past 10 s (a quiet CI run, 2026-12-06: "count failed" on the first query after the kill).
    const env = { ...process.env, PG_CONNECT_TIMEOUT_MS: '120000', PG_QUERY_TIMEOUT_MS: '120000' };
    const p = watch(spawn(process.execPath, ['--import', 'tsx', FIXTURE, dir, ...(openAtOnce ? ['open'] : [])], { stdio: ['pipe', 'pipe', 'pipe'], env }));
    procs.push(p);
    return p;
  };
  const send = (p: AgentqProcess, line: string) => p.child.stdin!.write(line + '\n');
  const pidOf = (p: AgentqProcess) => p.child.pid!;
  const lockFile = (dir: string) => join(dir, 'pglite.lock');
  const ownerFile = (dir: string) => join(dir, 'pglite.json');

  // One data dir for both tests: creating one (initdb in WASM) is the costliest step here.
  let dir: string;
  beforeAll(() => {
    dir = newDir();
  });

  it(`two processes opening one data dir at once, ${ROUNDS} times: one owner each time, the second's writes visible to the first`, async () => {
    const both = [spawnFixture(dir), spawnFixture(dir)];
    await Promise.all(both.map((p) => p.waitForLog((l) => l.msg === 'listening', 240_000)));
    const wins = [0, 0];
    for (let round = 1; round <= ROUNDS; round++) {
      const from = both.map((p) => p.lines.length);
      for (const p of both) send(p, `open ${round}`);
      const ready = await Promise.all(both.map((p) => p.waitForLog((l) => l.msg === 'ready' && l.round === round, 240_000)));
      const owners = both.filter((_, i) => ready[i].owner === true);
      expect(owners, `round ${round}`).toHaveLength(1);
      const [owner] = owners;
      const other = both.find((p) => p !== owner)!;
      wins[both.indexOf(owner)]++;
      const linesOfRound = both.flatMap((p, i) => p.lines.slice(from[i]));
      expect(linesOfRound.filter((l) => l.msg === 'embedded PGlite started')).toHaveLength(1);
      expect(other.lines.slice(from[both.indexOf(other)]).find((l) => l.msg === USING_OTHER)).toMatchObject({ ownerPid: pidOf(owner) });
      expect(readFileSync(lockFile(dir), 'utf8').trim()).toBe(String(pidOf(owner)));
      send(owner, `count ${pidOf(other)} ${round}`);
      expect((await owner.waitForLog((l) => l.msg === 'count' && l.round === round)).n).toBe(1);
      send(other, 'close');
      await other.waitForLog((l) => l.msg === 'closed' && l.round === round);
      // The other process never removes the owner's files.
      expect(existsSync(ownerFile(dir))).toBe(true);
      send(owner, 'close');
      await owner.waitForLog((l) => l.msg === 'closed' && l.round === round);
      expect(existsSync(lockFile(dir))).toBe(false);
      expect(existsSync(ownerFile(dir))).toBe(false);
    }
    figure('PGlite owner races: won by process 1 / process 2', wins);
    for (const p of both) send(p, 'exit');
    expect(await Promise.all(both.map((p) => p.exited))).toEqual([0, 0]);
  }, 600_000);

  it('a SIGKILLed owner\'s lock is taken over by one of two processes started together; its data is kept', async () => {
    const first = spawnFixture(dir, true);
    expect((await first.waitForLog((l) => l.msg === 'ready', 240_000)).owner).toBe(true);
    first.kill('SIGKILL');
    expect(await first.exited).toBeNull();
    // The dead owner left its lock and its socket file behind.
    expect(readFileSync(lockFile(dir), 'utf8').trim()).toBe(String(pidOf(first)));
    expect(existsSync(ownerFile(dir))).toBe(true);

    const both = [spawnFixture(dir, true), spawnFixture(dir, true)];
    const ready = await Promise.all(both.map((p) => p.waitForLog((l) => l.msg === 'ready', 240_000)));
    expect(ready.filter((r) => r.owner === true)).toHaveLength(1);
    const owner = both.find((_, i) => ready[i].owner === true)!;
    const other = both.find((p) => p !== owner)!;
    expect(owner.lines.find((l) => l.msg === 'took over the embedded PGlite lock of a process that is gone')).toMatchObject({ deadOwnerPid: pidOf(first) });
    expect(other.lines.find((l) => l.msg === USING_OTHER)).toMatchObject({ ownerPid: pidOf(owner) });
    // The killed owner's row survived; the second process reads it through the new owner.
    send(other, `count ${pidOf(first)} 0`);
    expect((await other.waitForLog((l) => l.msg === 'count')).n).toBe(1);
    for (const p of [other, owner]) {
      send(p, 'close');
      await p.waitForLog((l) => l.msg === 'closed');
    }
    expect(existsSync(lockFile(dir))).toBe(false);
    for (const p of both) send(p, 'exit');
    expect(await Promise.all(both.map((p) => p.exited))).toEqual([0, 0]);
  }, 600_000);

  const answerOf = (p: AgentqProcess, from: number) => p.waitForLog((l) => p.lines.indexOf(l) >= from && (l.msg === 'count' || l.msg === 'count failed'), 240_000);

  /** An owner and a process connected through its socket, in a data dir of their own; then the owner is SIGKILLed. */
  async function survivorOfKilledOwner() {
    const dir = newDir();
    const first = spawnFixture(dir, true);
    expect((await first.waitForLog((l) => l.msg === 'ready', 240_000)).owner).toBe(true);
    const survivor = spawnFixture(dir, true);
    expect((await survivor.waitForLog((l) => l.msg === 'ready', 240_000)).owner).toBe(false);
    first.kill('SIGKILL');
    expect(await first.exited).toBeNull();
    return { dir, first, survivor };
  }

  it('a process connected through a SIGKILLed owner reaches the process that took over at its next query; what it writes then is read once there', async () => {
    const { dir, first, survivor } = await survivorOfKilledOwner();
    const next = spawnFixture(dir, true);
    expect((await next.waitForLog((l) => l.msg === 'ready', 240_000)).owner).toBe(true);
    expect(next.lines.find((l) => l.msg === 'took over the embedded PGlite lock of a process that is gone')).toMatchObject({ deadOwnerPid: pidOf(first) });

    // Its first query since the kill: it dialled the dead owner's port before (ECONNREFUSED, every time).
    const from = survivor.lines.length;
    send(survivor, `count ${pidOf(first)} 0`);
    expect(await answerOf(survivor, from)).toMatchObject({ msg: 'count', n: 1, owner: false });
    expect(survivor.lines.slice(from).find((l) => l.msg === USING_OTHER)).toMatchObject({ ownerPid: pidOf(next) });
    send(survivor, 'write 7');
    await survivor.waitForLog((l) => l.msg === 'written');
    const at = next.lines.length;
    send(next, `count ${pidOf(survivor)} 7`);
    expect(await answerOf(next, at)).toMatchObject({ msg: 'count', n: 1 });

    for (const p of [survivor, next]) {
      send(p, 'close');
      await p.waitForLog((l) => l.msg === 'closed');
    }
    expect(existsSync(lockFile(dir))).toBe(false);
    for (const p of [survivor, next]) send(p, 'exit');
    expect(await Promise.all([survivor.exited, next.exited])).toEqual([0, 0]);
  }, 600_000);

  it('a process connected through a SIGKILLed owner takes the data dir over itself at its next query when no other process has', async () => {
    const { dir, first, survivor } = await survivorOfKilledOwner();
    const from = survivor.lines.length;
    send(survivor, `count ${pidOf(first)} 0`);
    expect(await answerOf(survivor, from)).toMatchObject({ msg: 'count', n: 1, owner: true });
    expect(survivor.lines.slice(from).find((l) => l.msg === 'took over the embedded PGlite lock of a process that is gone')).toMatchObject({ deadOwnerPid: pidOf(first) });
    expect(readFileSync(lockFile(dir), 'utf8').trim()).toBe(String(pidOf(survivor)));

    // It serves the others now: a process started later reads, through it, the row it wrote through the dead owner.
    const later = spawnFixture(dir, true);
    expect((await later.waitForLog((l) => l.msg === 'ready', 240_000)).owner).toBe(false);
    expect(later.lines.find((l) => l.msg === USING_OTHER)).toMatchObject({ ownerPid: pidOf(survivor) });
    send(later, `count ${pidOf(survivor)} 0`);
    expect(await answerOf(later, 0)).toMatchObject({ msg: 'count', n: 1 });

    for (const p of [later, survivor]) {
      send(p, 'close');
      await p.waitForLog((l) => l.msg === 'closed');
    }
    expect(existsSync(lockFile(dir))).toBe(false);
    expect(existsSync(ownerFile(dir))).toBe(false);
    for (const p of [later, survivor]) send(p, 'exit');
    expect(await Promise.all([later.exited, survivor.exited])).toEqual([0, 0]);
  }, 600_000);
});
