import type { FairScheduler, DispatchResult } from './fair-scheduler.js';

export interface DispatchLoopLogger {
  warn(obj: object, msg?: string): void;
}

export interface DispatchLoop {
  /** Asks for a dispatch soon; concurrent kicks coalesce into one running call plus at most one pending. */
  kick(): Promise<void>;
  /**
   * Takes in a dispatch another call made (a worker's claim or release dispatched in its own script call):
   * arms the wake-up it may carry (given to one caller only) and dispatches again if it stopped with work left.
   */
  absorb(r: DispatchResult): void;
  close(): Promise<void>;
}

/**
 * Runs `scheduler.dispatch()` on demand (enqueue, job finished) and at the one time the scheduler says a
 * lane or retry becomes due, so idle and throttled lanes cost no Redis traffic. A slow safety poll covers
 * lost kicks and sweeps expired leases (crashed workers).
 */
export function createDispatchLoop(opts: {
  /** With `onDispatched`, the scheduler's own dispatches (after a lease) are taken in as `absorb` takes them. */
  scheduler: Pick<FairScheduler, 'dispatch'> & Partial<Pick<FairScheduler, 'onDispatched'>>;
  /**
   * A worker's loop registers its concurrency and its ask (the jobs of BullMQ's wait list it wants kept for it,
   * buffer-ask.ts; absent: the scheduler's fixed share of the concurrency), renewed every half safety poll and
   * whenever the ask moved.
   */
  worker?: { id: string; concurrency: number; ask?: () => number };
  logger?: DispatchLoopLogger;
  safetyPollMs?: number;
  onDispatch?: (r: DispatchResult) => void;
  /** Clock for the registration cadence (tests). */
  now?: () => number;
}): DispatchLoop {
  let running: Promise<void> | undefined;
  let pending = false;
  let closed = false;
  let wakeTimer: NodeJS.Timeout | undefined;
  let wakeAt = Infinity;

  const arm = (r: DispatchResult) => {
    if (r.more) pending = true;
    if (r.nextWakeMs === undefined || closed) return;
    // nextWakeMs is Redis time: convert to a local deadline through the Redis `now` of the same call.
    const at = Date.now() + Math.max(0, r.nextWakeMs - r.nowMs) + 2;
    if (at >= wakeAt) return;
    if (wakeTimer) clearTimeout(wakeTimer);
    wakeAt = at;
    wakeTimer = setTimeout(() => {
      wakeTimer = undefined;
      wakeAt = Infinity;
      void kick();
    }, at - Date.now());
    wakeTimer.unref();
  };

  const safetyPollMs = opts.safetyPollMs ?? 10_000;
  // Outlives two missed safety polls, so only a dead (or closed) worker's share of the buffer lapses.
  const ttlMs = safetyPollMs * 3;
  // Renewed at most every half poll (so every safety poll renews it), not on every call: a throttled
  // deployment dispatches on every wake-up, and the renewal is two writes each time.
  const clock = opts.now ?? Date.now;
  const renewEveryMs = safetyPollMs / 2;
  let registeredAt = -Infinity;
  let registeredAsk: number | undefined;
  const registration = (at: number) => {
    const w = opts.worker;
    if (!w) return undefined;
    const ask = w.ask?.();
    if (at - registeredAt < renewEveryMs && ask === registeredAsk) return undefined;
    return { id: w.id, concurrency: w.concurrency, ttlMs, ...(ask !== undefined ? { ask } : {}) };
  };

  const run = async () => {
    do {
      pending = false;
      try {
        const at = clock();
        const register = registration(at);
        const r = await opts.scheduler.dispatch(register);
        if (register) {
          registeredAt = at;
          registeredAsk = register.ask;
        }
        arm(r);
        opts.onDispatch?.(r);
      } catch (err) {
        opts.logger?.warn({ err }, 'fair dispatch failed');
      }
    } while (pending && !closed);
    running = undefined;
  };

  function kick(): Promise<void> {
    if (closed) return Promise.resolve();
    if (running) {
      pending = true;
      return running;
    }
    running = run();
    return running;
  }

  const poll = setInterval(() => void kick(), safetyPollMs);
  poll.unref();

  const absorb = (r: DispatchResult) => {
    arm(r);
    opts.onDispatch?.(r);
    if (r.more) void kick();
  };
  const unsubscribe = opts.scheduler.onDispatched?.(absorb);

  return {
    kick,
    absorb,
    async close() {
      closed = true;
      unsubscribe?.();
      clearInterval(poll);
      if (wakeTimer) clearTimeout(wakeTimer);
      await running;
    },
  };
}
