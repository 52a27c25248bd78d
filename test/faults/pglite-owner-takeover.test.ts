import { existsSync, readFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { answerOf, firstCountAfterKill, lockFile, ownerFile, pgliteOwners, pidOf, send, TOOK_OVER, USING_OTHER } from '../helpers/pglite-owner.js';
import { exitGuard, exitWithin, KILLED_EXIT_MS } from '../helpers/processes.js';

/** How long a fixture is given to exit once told `exit` (its PGlite closed already). */
const FIXTURE_EXIT_MS = 30_000;
/** Each test's exit waits, at most: a SIGKILLed owner's close, then the two fixtures' exits (side by side). */
const EXIT_WAITS_MS = exitGuard(KILLED_EXIT_MS) + exitGuard(FIXTURE_EXIT_MS);

/**
 * Embedded PGlite after its owner is SIGKILLed under a process connected through its socket: that process's next
 * query goes to the process that took the data dir over, or, when none did, makes it the owner itself (a query that
 * went out on the pool's connection to the dead owner before the pool heard it close fails with that connection:
 * firstCountAfterKill). Each test has a data dir of its own.
 */
describe('embedded PGlite: a process connected through an owner that was SIGKILLed', () => {
  const { newDir, spawnFixture, close } = pgliteOwners();
  afterAll(close);

  /** An owner and a process connected through its socket, in a data dir of their own; then the owner is SIGKILLed. */
  async function survivorOfKilledOwner() {
    const dir = newDir();
    const first = spawnFixture(dir, true);
    expect((await first.waitForLog((l) => l.msg === 'ready', 240_000)).owner).toBe(true);
    const survivor = spawnFixture(dir, true);
    expect((await survivor.waitForLog((l) => l.msg === 'ready', 240_000)).owner).toBe(false);
    first.kill('SIGKILL');
    expect(await exitWithin(first, KILLED_EXIT_MS, 'the owner to close once SIGKILLed')).toBeNull();
    return { dir, first, survivor };
  }

  it('a process connected through a SIGKILLed owner reaches the process that took over at its next query; what it writes then is read once there', async () => {
    const { dir, first, survivor } = await survivorOfKilledOwner();
    const next = spawnFixture(dir, true);
    expect((await next.waitForLog((l) => l.msg === 'ready', 240_000)).owner).toBe(true);
    expect(next.lines.find((l) => l.msg === TOOK_OVER)).toMatchObject({ deadOwnerPid: pidOf(first) });

    // Its first query since the kill: it dialled the dead owner's port before (ECONNREFUSED, every time).
    const from = survivor.lines.length;
    expect(await firstCountAfterKill(survivor, `count ${pidOf(first)} 0`)).toMatchObject({ msg: 'count', n: 1, owner: false });
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
    expect(await Promise.all([survivor, next].map((p) => exitWithin(p, FIXTURE_EXIT_MS, `fixture ${pidOf(p)} to exit once told`)))).toEqual([0, 0]);
  }, 600_000 + EXIT_WAITS_MS);

  it('a process connected through a SIGKILLed owner takes the data dir over itself at its next query when no other process has', async () => {
    const { dir, first, survivor } = await survivorOfKilledOwner();
    const from = survivor.lines.length;
    expect(await firstCountAfterKill(survivor, `count ${pidOf(first)} 0`)).toMatchObject({ msg: 'count', n: 1, owner: true });
    expect(survivor.lines.slice(from).find((l) => l.msg === TOOK_OVER)).toMatchObject({ deadOwnerPid: pidOf(first) });
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
    expect(await Promise.all([later, survivor].map((p) => exitWithin(p, FIXTURE_EXIT_MS, `fixture ${pidOf(p)} to exit once told`)))).toEqual([0, 0]);
  }, 600_000 + EXIT_WAITS_MS);
});
