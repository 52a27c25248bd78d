import { afterAll, afterEach, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isAlive, tryLock, type LockFs, type OwnerLock } from '../src/shared/infra/db/owner-lock.js';

/** Node's file operations, each link, rename and removal followed by `after()`: a process that starts then. */
function watched(after: () => void): LockFs {
  const then =
    <A extends unknown[], R>(f: (...a: A) => R) =>
    (...a: A): R => {
      const r = f(...a);
      after();
      return r;
    };
  return { ...fs, linkSync: then(fs.linkSync), renameSync: then(fs.renameSync), rmSync: then(fs.rmSync) };
}

/** A pid no process has here (checked), as a SIGKILLed owner leaves in its lock file. */
function deadPid(): number {
  for (let pid = 4_194_000; pid > 4_000_000; pid--) if (!isAlive(pid)) return pid;
  throw new Error('no free pid found');
}

describe('owner lock', () => {
  const locks: OwnerLock[] = [];
  const dir = fs.mkdtempSync(join(tmpdir(), 'agentq-owner-lock-'));
  afterEach(() => {
    for (const l of locks.splice(0)) l.release();
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it("takes over a dead process's lock and names it; release removes the file", () => {
    const path = join(dir, 'a.lock');
    const dead = deadPid();
    fs.writeFileSync(path, `${dead}\n`);
    const attempt = tryLock(path);
    expect(attempt).toMatchObject({ owned: true, lock: { tookOverFrom: dead } });
    if (!attempt.owned) return;
    expect(fs.readFileSync(path, 'utf8').trim()).toBe(String(process.pid));
    attempt.lock.release();
    expect(fs.existsSync(path)).toBe(false);
  });

  it('a process starting at any step of a takeover finds the lock file there, so the process taking over owns it', () => {
    const path = join(dir, 'b.lock');
    const dead = deadPid();
    fs.writeFileSync(path, `${dead}\n`);
    // The other process creates the lock as the lock does (a link of a file naming a live pid): it gets it only
    // if, at that moment, there is no lock file.
    const other = join(dir, 'other-pid');
    fs.writeFileSync(other, `${process.ppid}\n`);
    const othersWins: number[] = [];
    let steps = 0;
    // Only while the takeover runs (the lock keeps these operations for its release).
    let taking = true;
    const attempt = tryLock(
      path,
      watched(() => {
        if (!taking) return;
        steps++;
        try {
          fs.linkSync(other, path);
          othersWins.push(steps);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        }
      }),
    );
    taking = false;
    fs.rmSync(other, { force: true });
    // The takeover's steps: the guard's link, the temp file's removal, the rename, the guard's removal, ...
    expect(steps).toBeGreaterThanOrEqual(4);
    expect(othersWins).toEqual([]);
    expect(attempt).toMatchObject({ owned: true, lock: { tookOverFrom: dead } });
    if (attempt.owned) locks.push(attempt.lock);
    expect(fs.readFileSync(path, 'utf8').trim()).toBe(String(process.pid));
  });

  it('a live holder keeps its lock', () => {
    const path = join(dir, 'c.lock');
    fs.writeFileSync(path, `${process.ppid}\n`);
    expect(tryLock(path)).toEqual({ owned: false, holderPid: process.ppid });
    expect(fs.readFileSync(path, 'utf8').trim()).toBe(String(process.ppid));
  });
});
