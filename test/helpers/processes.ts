import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { SHUTDOWN_MARGIN_MS } from '../../src/app/shutdown.js';
import { transpiledTwin } from './transpiled.js';
import { within } from './wait.js';

const MAIN = fileURLToPath(new URL('../../src/main.ts', import.meta.url));
const ROOT = fileURLToPath(new URL('../..', import.meta.url));

export interface AgentqProcess {
  child: ChildProcess;
  /** Every JSON log line the process wrote so far. */
  lines: Array<Record<string, unknown>>;
  /** Every line the process wrote to stdout so far, as written: the log lines' text and anything else. */
  stdoutLines: string[];
  waitForLog(predicate: (line: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  /** The exit code (null when killed by a signal), once the process ended and its stdout/stderr are fully read ('close'). */
  exited: Promise<number | null>;
  /** What the process wrote to stderr so far (start-up failures are one line there). */
  stderr(): string;
  kill(signal: NodeJS.Signals): void;
  /**
   * The child leads a process group of its own (`spawnGroup`): what it started (npm's shell and agentq) is in it,
   * and a kill for good (`exitWithin`'s, `stopProcess`'s) ends the whole group. `kill` still signals the child alone.
   */
  group?: boolean;
}

/**
 * Runs the real entry point (`src/main.ts <role>`) as a separate process, as `npm run worker` would.
 * `env` must point it at the test's Redis, database and emulator. `compiled`: a production build's folder
 * (dev/build/build-dist.ts): its `src/main.js` runs there with plain node, as the Docker image runs it.
 */
export function spawnAgentq(role: 'worker' | 'api' | 'all', env: Record<string, string>, compiled?: string, opts: { preload?: string } = {}): AgentqProcess {
  // `preload`: a test fixture module loaded before the entry point (e.g. one that makes a stray rejection on a signal).
  const args = compiled ? [...(opts.preload ? ['--import', opts.preload] : []), 'src/main.js', role] : sourceArgs(role, opts.preload);
  const child = spawn(process.execPath, args, {
    ...(compiled ? { cwd: compiled } : {}),
    env: { ...process.env, LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  return watch(child);
}

/** `src/main.ts <role>` from the sources: transpiled (`nodeArgsFor`), the preload too, or both through tsx. */
function sourceArgs(role: string, preload?: string): string[] {
  const main = transpiledTwin(MAIN);
  if (!main) return ['--import', 'tsx', ...(preload ? ['--import', preload] : []), MAIN, role];
  return [...(preload ? ['--import', pathToFileURL(transpiledTwin(preload)!).href] : []), main, role];
}

/**
 * Runs an npm script of the repo (`npm start`, `npm run worker`, ...) exactly as a user types it: the
 * returned process is npm itself, so `kill()` signals npm, not agentq. In a process group of its own
 * (`spawnGroup`): a bounded wait that gives up on it kills agentq too, not npm alone.
 */
export function spawnNpmScript(script: string, env: Record<string, string>): AgentqProcess {
  return spawnGroup('npm', ['run', '--silent', script], { cwd: ROOT, env: { ...process.env, LOG_LEVEL: 'info', ...env } });
}

/**
 * A child that starts processes of its own (npm: a shell, then agentq), as the leader of a new process group
 * (`detached`: setsid), stdout and stderr piped. Killing the child alone (npm) left what it started running past
 * the test (agentq, its drain and connections), and holding the child's stdout open: its `exited` never came.
 */
export function spawnGroup(command: string, args: string[], opts: Pick<SpawnOptions, 'cwd' | 'env'>): AgentqProcess {
  const child = spawn(command, args, { ...opts, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  return { ...watch(child), group: true };
}

/** Collects a child's JSON log lines and exit. */
export function watch(child: ChildProcess): AgentqProcess {
  const lines: Array<Record<string, unknown>> = [];
  const stdoutLines: string[] = [];
  const waiters: Array<{ predicate: (l: Record<string, unknown>) => boolean; resolve: (l: Record<string, unknown>) => void }> = [];
  let buffer = '';
  let stderr = '';
  child.stdout!.on('data', (chunk: Buffer) => {
    buffer += chunk.toString();
    let nl: number;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      const text = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 1);
      stdoutLines.push(text);
      try {
        const line = JSON.parse(text) as Record<string, unknown>;
        lines.push(line);
        for (const w of [...waiters]) {
          if (w.predicate(line)) {
            waiters.splice(waiters.indexOf(w), 1);
            w.resolve(line);
          }
        }
      } catch {
        // Not a log line (e.g. the dev-key banner).
      }
    }
  });
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  // 'close', not 'exit': only then has every line the process wrote been read into `lines`.
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  return {
    child,
    lines,
    stdoutLines,
    exited,
    stderr: () => stderr,
    kill: (signal) => child.kill(signal),
    waitForLog(predicate, timeoutMs = 60_000) {
      const found = lines.find(predicate);
      if (found) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`log line not seen within ${timeoutMs} ms; stderr: ${stderr.slice(-2000)}`)), timeoutMs);
        waiters.push({
          predicate,
          resolve: (l) => {
            clearTimeout(timer);
            resolve(l);
          },
        });
        void exited.then((code) => {
          clearTimeout(timer);
          reject(new Error(`process exited (${code}) before the log line; stderr: ${stderr.slice(-2000)}`));
        });
      });
    },
  };
}

/** A child a bounded wait may have to end: `group`, it leads a process group (`spawnGroup`), which is ended whole. */
type Killable = { child: ChildProcess; exited: Promise<unknown>; group?: boolean };

/**
 * Whether anything of the child is left: the child itself, or, for a group's leader, any process of its group (npm
 * may be gone while agentq, which it started, still runs).
 */
const running = (p: Pick<Killable, 'child' | 'group'>): boolean => {
  if (p.child.exitCode === null && p.child.signalCode === null) return true;
  if (!p.group || p.child.pid === undefined) return false;
  return signalGroup(p.child.pid, 0);
};

/** Signals every process of the group `pgid` leads; false when none is left (ESRCH). */
function signalGroup(pgid: number, signal: NodeJS.Signals | 0): boolean {
  try {
    process.kill(-pgid, signal);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return false;
    throw err;
  }
}

/** SIGKILL for the child, or for its whole group; continued first (SIGCONT) in case it was stopped. */
function hardKill(p: Pick<Killable, 'child' | 'group'>): void {
  if (!running(p)) return;
  if (p.group && p.child.pid !== undefined) {
    signalGroup(p.child.pid, 'SIGCONT');
    signalGroup(p.child.pid, 'SIGKILL');
    return;
  }
  p.child.kill('SIGCONT');
  p.child.kill('SIGKILL');
}

/** How long a child SIGKILLed is given to close (its end, and its stdout and stderr read to their end). */
export const KILLED_EXIT_MS = 10_000;
/** SHUTDOWN_GRACE_MS's default (config.ts): the drain's grace of a process started without it. */
export const DEFAULT_GRACE_MS = 30_000;
/**
 * What a process told to stop (SIGTERM, SIGINT) may take to close: its drain's grace (`graceMs`, its
 * SHUTDOWN_GRACE_MS), the margin its own shutdown deadline allows past it, and the reading of its output to the end.
 */
export const termExitMs = (graceMs: number): number => graceMs + SHUTDOWN_MARGIN_MS + KILLED_EXIT_MS;
/** How long a child is given to close once `exitWithin` SIGKILLed it, its own bound passed. */
export const CHILD_KILL_MS = 5_000;
/** What one `exitWithin(p, ms, ...)` may take: `ms`, then the kill's. Count it in the test's timeout. */
export const exitGuard = (ms: number): number => ms + CHILD_KILL_MS;

/**
 * The child's end (`exited`) within `ms`, else it is continued (in case it was stopped) and SIGKILLed, given
 * CHILD_KILL_MS more to close, and the wait fails naming `what`. An unbounded `await p.exited` on a child that
 * never ended (a drain stuck, a connect still retrying, a fixture stuck before its exit) ran into the bare test
 * timeout, naming nothing, and left the child running past the run.
 */
export async function exitWithin<T>(p: Killable & { exited: Promise<T> }, ms: number, what: string, opts: { kill?: () => void } = {}): Promise<T> {
  try {
    return await within(p.exited, ms, what);
  } catch (err) {
    throw await killedFor(p, err as Error, opts);
  }
}

/**
 * The next line a child writes (`lines`: a readline iterator over its stdout) within `ms`, else the child is
 * killed as `exitWithin` kills it and the wait fails naming `what`; so does a stdout that ends first (the child
 * exited or closed it). An unbounded `await lines.next()` on a child stuck before its line (a connect retrying, a
 * fixture that never got going) ran into the bare test timeout, naming nothing, and left the child running.
 */
export async function lineWithin(p: Killable, lines: AsyncIterator<string>, ms: number, what: string): Promise<string> {
  try {
    const next = await within(lines.next(), ms, what);
    if (next.done) throw new Error(`${what}: the process closed its output first`);
    return next.value;
  } catch (err) {
    throw await killedFor(p, err as Error);
  }
}

/** Ends a child whose bounded wait failed (continued, then SIGKILLed), waits CHILD_KILL_MS for its close, and says how that went in the error. */
async function killedFor(p: Killable, err: Error, opts: { kill?: () => void } = {}): Promise<Error> {
  // `kill`: where the process to end is not the child itself (a server the child runs as another user).
  if (opts.kill) opts.kill();
  else hardKill(p);
  const closed = await within(p.exited, CHILD_KILL_MS, 'its close once SIGKILLed').then(
    () => 'killed',
    () => `still not closed ${CHILD_KILL_MS} ms after SIGKILL`,
  );
  return new Error(`${err.message} (pid ${p.child.pid}: ${closed})`, { cause: err });
}

/**
 * Ends a process for good (for afterAll): SIGTERM and up to `graceMs` for it to close, then SIGKILL. A
 * stopped (SIGSTOP) process is continued first so it can act on the signal.
 */
export async function stopProcess(p: AgentqProcess | undefined, graceMs = 15_000): Promise<void> {
  if (!p || !running(p)) return;
  p.kill('SIGCONT');
  p.kill('SIGTERM');
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), graceMs)));
  const outcome = await Promise.race([p.exited, late]);
  clearTimeout(timer);
  if (outcome === 'late' && running(p)) {
    hardKill(p);
    await within(p.exited, KILLED_EXIT_MS, `process ${p.child.pid} to close once SIGKILLed`);
  }
}
