import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isAlive, tryLock, type OwnerLock } from '../src/shared/infra/db/owner-lock.js';

/**
 * Every fs call the lock makes can be followed by `after`: there a test plays a process that starts at that
 * moment, with the real fs functions (`real`).
 */
const step = vi.hoisted(() => ({ after: undefined as undefined | (() => void), real: undefined as undefined | typeof import('node:fs') }));
vi.mock('node:fs', async (importOriginal) => {
  const real = await importOriginal<typeof import('node:fs')>();
  step.real = real;
  const then =
    <A extends unknown[], R>(f: (...a: A) => R) =>
    (...a: A): R => {
      const r = f(...a);
      step.after?.();
      return r;
    };
  return { ...real, linkSync: then(real.linkSync), renameSync: then(real.renameSync), rmSync: then(real.rmSync) };
});

/** A pid no process has here (checked), as a SIGKILLed owner leaves in its lock file. */
function deadPid(): number {
  for (let pid = 4_194_000; pid > 4_000_000; pid--) if (!isAlive(pid)) return pid;
  throw new Error('no free pid found');
}

describe('owner lock', () => {
  const locks: OwnerLock[] = [];
  const dir = mkdtempSync(join(tmpdir(), 'agentq-owner-lock-'));
  afterEach(() => {
    step.after = undefined;
    for (const l of locks.splice(0)) l.release();
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("takes over a dead process's lock and names it; release removes the file", () => {
    const path = join(dir, 'a.lock');
    const dead = deadPid();
    writeFileSync(path, `${dead}\n`);
    const attempt = tryLock(path);
    expect(attempt).toMatchObject({ owned: true, lock: { tookOverFrom: dead } });
    if (attempt.owned) locks.push(attempt.lock);
    expect(readFileSync(path, 'utf8').trim()).toBe(String(process.pid));
    locks.pop()!.release();
    expect(() => readFileSync(path)).toThrow();
  });

  it('a process starting at any step of a takeover finds the lock file there, so the process taking over owns it', () => {
    const path = join(dir, 'b.lock');
    const dead = deadPid();
    writeFileSync(path, `${dead}\n`);
    // The other process creates the lock as `create` does (link of a file naming a live pid): it succeeds only
    // if, at that moment, there is no lock file.
    const other = join(dir, 'other-pid');
    step.real!.writeFileSync(other, `${process.ppid}\n`);
    const othersWins: number[] = [];
    let calls = 0;
    step.after = () => {
      calls++;
      try {
        step.real!.linkSync(other, path);
        othersWins.push(calls);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
    };
    const attempt = tryLock(path);
    step.after = undefined;
    rmSync(other, { force: true });
    expect(calls).toBeGreaterThan(0);
    expect(othersWins).toEqual([]);
    expect(attempt).toMatchObject({ owned: true, lock: { tookOverFrom: dead } });
    if (attempt.owned) locks.push(attempt.lock);
    expect(readFileSync(path, 'utf8').trim()).toBe(String(process.pid));
  });

  it('a live holder keeps its lock', () => {
    const path = join(dir, 'c.lock');
    writeFileSync(path, `${process.ppid}\n`);
    expect(tryLock(path)).toEqual({ owned: false, holderPid: process.ppid });
    expect(readFileSync(path, 'utf8').trim()).toBe(String(process.ppid));
  });
});
