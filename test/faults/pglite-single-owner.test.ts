import { existsSync, readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { figure } from '../helpers/faults.js';
import { lockFile, ownerFile, pgliteOwners, pidOf, send, TOOK_OVER, USING_OTHER } from '../helpers/pglite-owner.js';
import { exitGuard, exitWithin, KILLED_EXIT_MS } from '../helpers/processes.js';

/** How long a fixture is given to exit once told `exit` (its PGlite closed already). */
const FIXTURE_EXIT_MS = 30_000;
/** Each test's exit waits, at most: a SIGKILLed owner's close, then the two fixtures' exits (side by side). */
const EXIT_WAITS_MS = exitGuard(KILLED_EXIT_MS) + exitGuard(FIXTURE_EXIT_MS);

const ROUNDS = 12;

/**
 * Embedded PGlite has one owner per data dir. Two real processes open the same data dir at the same instant
 * (the race `npm run api` + `npm run worker` started together runs, without the jitter of two process
 * start-ups: both get the go in one tick), 12 times; each time exactly one starts PGlite, the other connects
 * through its socket, and what the second writes the first reads. Then a SIGKILLed owner's lock is taken over
 * by one of two freshly started processes. (A process connected through an owner SIGKILLed under it:
 * pglite-owner-takeover.test.ts, a file of its own so the two halves run side by side.)
 */
describe('embedded PGlite: exactly one owning process per data dir', () => {
  const { newDir, spawnFixture, close } = pgliteOwners();
  afterAll(close);

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
    expect(await Promise.all(both.map((p) => exitWithin(p, FIXTURE_EXIT_MS, `fixture ${pidOf(p)} to exit once told`)))).toEqual([0, 0]);
  }, 600_000 + EXIT_WAITS_MS);

  it('a SIGKILLed owner\'s lock is taken over by one of two processes started together; its data is kept', async () => {
    const first = spawnFixture(dir, true);
    expect((await first.waitForLog((l) => l.msg === 'ready', 240_000)).owner).toBe(true);
    first.kill('SIGKILL');
    expect(await exitWithin(first, KILLED_EXIT_MS, 'the owner to close once SIGKILLed')).toBeNull();
    // The dead owner left its lock and its socket file behind.
    expect(readFileSync(lockFile(dir), 'utf8').trim()).toBe(String(pidOf(first)));
    expect(existsSync(ownerFile(dir))).toBe(true);

    const both = [spawnFixture(dir, true), spawnFixture(dir, true)];
    const ready = await Promise.all(both.map((p) => p.waitForLog((l) => l.msg === 'ready', 240_000)));
    expect(ready.filter((r) => r.owner === true)).toHaveLength(1);
    const owner = both.find((_, i) => ready[i].owner === true)!;
    const other = both.find((p) => p !== owner)!;
    expect(owner.lines.find((l) => l.msg === TOOK_OVER)).toMatchObject({ deadOwnerPid: pidOf(first) });
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
    expect(await Promise.all(both.map((p) => exitWithin(p, FIXTURE_EXIT_MS, `fixture ${pidOf(p)} to exit once told`)))).toEqual([0, 0]);
  }, 600_000 + EXIT_WAITS_MS);
});
