import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export interface BenchChild<R = unknown> {
  child: ChildProcess;
  /** The child's first message (`{ ready: ... }`). */
  ready: Promise<R>;
  /** Sends `{ id, ...msg }` and resolves with the child's `{ id, result }` answer. */
  request<T = unknown>(msg: Record<string, unknown>, timeoutMs?: number): Promise<T>;
  /** Resolves with the first message for which `match` is true. */
  next<T = unknown>(match: (m: any) => boolean, timeoutMs?: number): Promise<T>;
  exited: Promise<number | null>;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/**
 * Runs one of bench/children/*.ts as a separate Node process (through tsx) with an IPC channel: children
 * answer `{ ready }` once started and `{ id, result | error }` per request.
 */
export function startChild<R = unknown>(name: string, args: string[] = [], env: Record<string, string> = {}): BenchChild<R> {
  const file = fileURLToPath(new URL(`../children/${name}.ts`, import.meta.url));
  const child = fork(file, args, { execArgv: ['--import', 'tsx'], env: { ...process.env, ...env }, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const listeners = new Set<(m: any) => void>();
  child.on('message', (m) => listeners.forEach((l) => l(m)));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  let seq = 0;

  function next<T>(match: (m: any) => boolean, timeoutMs = 120_000): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => done(new Error(`bench child ${name}: no answer within ${timeoutMs} ms`)), timeoutMs);
      const onExit = (code: number | null) => done(new Error(`bench child ${name} exited (${code}) before answering`));
      const listener = (m: any) => {
        if (!match(m)) return;
        if (m && typeof m === 'object' && 'error' in m && m.error) done(new Error(`bench child ${name}: ${m.error}`));
        else done(undefined, m);
      };
      function done(err?: Error, m?: any) {
        clearTimeout(timer);
        listeners.delete(listener);
        child.off('exit', onExit);
        if (err) reject(err);
        else resolve(m as T);
      }
      listeners.add(listener);
      child.once('exit', onExit);
    });
  }

  return {
    child,
    ready: next<{ ready: R }>((m) => m && typeof m === 'object' && ('ready' in m || 'error' in m), 180_000).then((m) => m.ready),
    next,
    async request<T>(msg: Record<string, unknown>, timeoutMs?: number) {
      // A child that died fails the request (and so its case), not the whole run: a send on its closed
      // channel would otherwise be an unhandled 'error' event.
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`bench child ${name} exited (${child.exitCode ?? child.signalCode}) before a request`);
      const id = ++seq;
      const answer = next<{ result: T }>((m) => m?.id === id, timeoutMs);
      const unsent = new Promise<never>((_resolve, reject) => {
        child.send({ id, ...msg }, (err) => {
          if (err) reject(new Error(`bench child ${name}: ${err.message}`));
        });
      });
      return (await Promise.race([answer, unsent])).result;
    },
    exited,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}

/** In a child: sends a message to the parent (no-op when run standalone). */
export function toParent(msg: unknown): void {
  process.send?.(msg);
}

/** In a child: answers each `{ id, ...request }` from the parent with `handler`'s result or error. */
export function serveParent(handler: (msg: any) => Promise<unknown>): void {
  process.on('message', (msg: any) => {
    if (!msg || typeof msg.id !== 'number') return;
    handler(msg).then(
      (result) => toParent({ id: msg.id, result }),
      (err: unknown) => toParent({ id: msg.id, error: err instanceof Error ? err.stack ?? err.message : String(err) }),
    );
  });
  // The parent going away (crash, Ctrl-C) must not leave this child behind.
  process.on('disconnect', () => process.exit(0));
}
