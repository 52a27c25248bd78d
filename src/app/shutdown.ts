import type { Logger } from '../shared/core/logger.js';

/**
 * How long a shutdown may run past SHUTDOWN_GRACE_MS before the process exits anyway: the closes after the drain
 * (connections, the database, the tracing flush) take well under a second when Redis and Postgres answer.
 */
export const SHUTDOWN_MARGIN_MS = 5000;

/**
 * A signal repeated this soon after the first is the same one delivered twice, not a second: a terminal's Ctrl-C
 * reaches every process of the foreground group, npm included, and npm forwards it to agentq again.
 */
export const SIGNAL_REPEAT_MS = 1000;

/** The named closes of a shutdown: what is still pending when its deadline passes, and what failed. */
export interface CloseSteps {
  /** Runs one close under `name`; a rejection is logged and counted as failed, never thrown. True when it succeeded. */
  run(name: string, close: () => unknown): Promise<boolean>;
  pending(): string[];
  failed(): string[];
}

export function createCloseSteps(logger: Logger): CloseSteps {
  const pending: string[] = [];
  const failed: string[] = [];
  return {
    async run(name, close) {
      pending.push(name);
      try {
        await close();
        return true;
      } catch (err) {
        failed.push(name);
        logger.error({ err, step: name }, 'shutdown: close failed');
        return false;
      } finally {
        pending.splice(pending.indexOf(name), 1);
      }
    },
    pending: () => [...pending],
    failed: () => [...failed],
  };
}

export interface ShutdownOptions {
  logger: Logger;
  graceMs: number;
  /** Default SHUTDOWN_MARGIN_MS. */
  marginMs?: number;
  /** Closes the process's parts, each through `steps`. */
  close(steps: CloseSteps): Promise<void>;
  /** `process.exit` (a test passes its own). */
  exit(code: number): void;
  /** Default Date.now. */
  now?: () => number;
}

export interface Shutdown {
  /** A termination signal: the first drains; a second (SIGNAL_REPEAT_MS or more later) exits at once, non-zero. */
  signal(signal: string): void;
  /** An uncaught exception or unhandled rejection: logged, then the same drain, and the exit is non-zero. */
  fatal(kind: 'uncaughtException' | 'unhandledRejection', err: unknown): void;
}

/**
 * The process's one way out. The drain gets `graceMs` (the workers' grace), and the whole shutdown a hard
 * deadline of `graceMs + marginMs`: past it the closes still pending are logged and the process exits 1,
 * whatever Redis or Postgres do (a close waiting on a server that never answers would otherwise hold the
 * process forever, and an orchestrator's SIGKILL after its own grace says nothing of why). Exit 0 only when
 * every close succeeded and nothing uncaught happened.
 */
export function createShutdown(opts: ShutdownOptions): Shutdown {
  const { logger } = opts;
  const deadlineMs = opts.graceMs + (opts.marginMs ?? SHUTDOWN_MARGIN_MS);
  const steps = createCloseSteps(logger);
  const now = opts.now ?? Date.now;
  let firstSignalAt: number | undefined;
  let started = false;
  let exited = false;
  let code = 0;
  let deadline: NodeJS.Timeout | undefined;
  const exit = (exitCode: number) => {
    if (exited) return;
    exited = true;
    clearTimeout(deadline);
    opts.exit(exitCode);
  };

  async function drain(): Promise<void> {
    started = true;
    deadline = setTimeout(() => {
      logger.error({ deadlineMs, pending: steps.pending() }, 'shutdown deadline passed; exiting with closes still pending');
      exit(1);
    }, deadlineMs);
    try {
      await opts.close(steps);
    } catch (err) {
      code = 1;
      logger.error({ err }, 'error during shutdown');
    }
    // Already out (the deadline, a second signal): nothing more to say.
    if (exited) return;
    if (steps.failed().length) code = 1;
    logger.info({ exitCode: code, ...(steps.failed().length ? { failed: steps.failed() } : {}) }, 'stopped');
    exit(code);
  }

  return {
    signal(signal) {
      if (firstSignalAt !== undefined) {
        if (now() - firstSignalAt < SIGNAL_REPEAT_MS) return;
        // The operator (or a supervisor) will not wait: whatever is left is what a crash leaves, which every
        // part recovers from (job locks lapse, usage rows stay in their stream, leases are swept).
        logger.warn({ signal, pending: steps.pending() }, 'second signal: exiting now, without waiting for the shutdown');
        exit(1);
        return;
      }
      firstSignalAt = now();
      // Draining already (an uncaught error): the drain goes on; the next signal ends it.
      if (started) return;
      logger.info({ signal, graceMs: opts.graceMs }, 'shutting down: no new jobs, finishing in-flight ones');
      void drain();
    },
    fatal(kind, err) {
      code = 1;
      // As every other line: JSON, through the logger's redaction (an error's own fields included).
      logger.fatal({ err, kind }, started ? `${kind} during shutdown` : `${kind}: shutting down`);
      if (!started) void drain();
    },
  };
}
