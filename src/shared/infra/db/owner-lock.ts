import * as nodeFs from 'node:fs';

/** The file operations a lock makes: node's, or a test's that watches each one (test/owner-lock.test.ts). */
export type LockFs = Pick<typeof nodeFs, 'linkSync' | 'readFileSync' | 'renameSync' | 'rmSync' | 'writeFileSync'>;

/** A lock this process holds; `release` is idempotent and removes the file only while it is still ours. */
export interface OwnerLock {
  path: string;
  /** The pid of the dead process whose lock this one replaced, if it was taken over. */
  tookOverFrom?: number;
  release(): void;
}

export type LockAttempt = { owned: true; lock: OwnerLock } | { owned: false; holderPid?: number };

/** True while `pid` is a live process (EPERM: alive, owned by another user). */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function holderOf(fs: LockFs, path: string): number | undefined {
  try {
    const pid = Number.parseInt(fs.readFileSync(path, 'utf8'), 10);
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** The pid the lock file at `path` names, if it exists and names one. */
export const lockHolder = (path: string, fs: LockFs = nodeFs): number | undefined => holderOf(fs, path);

/**
 * Creates `path` holding this pid, atomically and only if it does not exist: the pid goes into a private
 * temp file first and `link(2)` publishes it (EEXIST when taken), so no reader ever sees the lock half
 * written, unlike O_EXCL create-then-write.
 */
function create(fs: LockFs, path: string): boolean {
  const temp = pidFile(fs, path);
  try {
    fs.linkSync(temp, path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  } finally {
    fs.rmSync(temp, { force: true });
  }
}

/** A private temp file beside `path` holding this pid. */
function pidFile(fs: LockFs, path: string): string {
  const temp = `${path}.${process.pid}.${Math.random().toString(36).slice(2)}`;
  fs.writeFileSync(temp, `${process.pid}\n`, { mode: 0o644 });
  return temp;
}

/**
 * Puts this pid in `path` in one step (a rename over the stale file). Removing the file first and creating it
 * again left a moment with no lock file, in which a process starting then created one and owned the data dir
 * without knowing a lock was taken over, while this process's create failed.
 */
function replace(fs: LockFs, path: string): void {
  const temp = pidFile(fs, path);
  try {
    fs.renameSync(temp, path);
  } catch (err) {
    fs.rmSync(temp, { force: true });
    throw err;
  }
}

/** Lock files this process holds (a second open in the same process must see its own lock as live). */
const held = new Set<string>();

/** A lock whose holder is gone: no pid in it, a dead pid, or our own pid on a lock we do not hold (pid reuse). */
const stale = (path: string, holder: number | undefined) =>
  holder === undefined || (holder === process.pid ? !held.has(path) : !isAlive(holder));

/**
 * One attempt at an exclusive, machine-wide lock file. A lock left by a dead process (SIGKILL, crash, power
 * loss) is taken over: only under a second lock (`<path>.takeover`) and only if the file still names the
 * same dead pid, so two processes finding the same stale lock never both replace it (the second would
 * overwrite the first one's fresh lock). The takeover guard is held for microseconds; a guard whose holder
 * died is removed the same way.
 */
export function tryLock(path: string, fs: LockFs = nodeFs): LockAttempt {
  if (create(fs, path)) return { owned: true, lock: lockAt(fs, path) };
  const holder = holderOf(fs, path);
  if (!stale(path, holder)) return { owned: false, holderPid: holder };
  const guard = `${path}.takeover`;
  if (!create(fs, guard)) {
    // Another process is taking the stale lock over right now; unless that process is gone too.
    const guardHolder = holderOf(fs, guard);
    if (guardHolder !== undefined && stale(guard, guardHolder)) fs.rmSync(guard, { force: true });
    return { owned: false };
  }
  try {
    if (holderOf(fs, path) !== holder) return { owned: false };
    // No other process changes the file meanwhile: a create fails on it (it exists) and a takeover needs the guard.
    replace(fs, path);
    return { owned: true, lock: { ...lockAt(fs, path), tookOverFrom: holder } };
  } finally {
    fs.rmSync(guard, { force: true });
  }
}

function lockAt(fs: LockFs, path: string): OwnerLock {
  let released = false;
  held.add(path);
  return {
    path,
    release() {
      if (released) return;
      released = true;
      held.delete(path);
      if (holderOf(fs, path) === process.pid) fs.rmSync(path, { force: true });
    },
  };
}
