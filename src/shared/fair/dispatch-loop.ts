import type { FairScheduler, DispatchResult, DispatchingWorker } from './fair-scheduler.js';

/**
 * How long a moved ask waits for a claim to carry its registration before a dispatch call of its own registers
 * it: under load a claim comes within milliseconds, so the move costs no round trip; an idle worker's move (its
 * rate fell) is registered this late, when a wait list sized for the old rate matters least.
 */
export const ASK_MOVE_GRACE_MS = 100;

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
  /**
   * The worker's registration when one is due (its ask moved, or its renewal), for a claim to carry instead of
   * a dispatch call of its own; taken once (the next call finds none due). Absent for a loop without a worker.
   */
  takeRegistration(): DispatchingWorker | undefined;
  /** The call that carried `takeRegistration`'s registration failed: it is due again. */
  registrationLost(): void;
  /** The worker's ask moved: the next claim registers it, or a dispatch of its own after ASK_MOVE_GRACE_MS. */
  askMoved(): void;
  /**
   * A call of this process just did what the safety poll's dispatch does: a release with `dispatch` sweeps what is
   * due (expired leases, timers, sleepers) and dispatches it. The next poll is skipped if it comes within a poll
   * interval and the worker's registration needs no renewal by it (see the poll).
   */
  swept(): void;
  /**
   * Whether a release sent now should sweep (read the timers, sleepers and leases): only once this process's last
   * sweep is half a safety poll old. The other releases of a wake-up's jobs, milliseconds apart, look only for an
   * active lane; the next poll still finds a sweep within its interval, so it stays skipped (and a lost wake-up is
   * caught within one, as before).
   */
  sweepDue(): boolean;
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
  /**
   * The earliest wake-up handed to this process after its timer's, kept for when that timer fires: Redis hands a
   * wake time to one caller only (and answers no one again for it), so a later one given here while the timer
   * waits for an earlier one would otherwise wait for the safety poll.
   */
  let laterAt = Infinity;

  const setWakeTimer = (at: number) => {
    if (wakeTimer) clearTimeout(wakeTimer);
    wakeAt = at;
    wakeTimer = setTimeout(() => {
      wakeTimer = undefined;
      wakeAt = Infinity;
      const later = laterAt;
      laterAt = Infinity;
      if (later !== Infinity) setWakeTimer(later);
      void kick();
    }, Math.max(0, at - Date.now()));
    wakeTimer.unref();
  };

  const arm = (r: DispatchResult) => {
    if (r.more) pending = true;
    if (r.nextWakeMs === undefined || closed) return;
    // nextWakeMs is Redis time: convert to a local deadline through the Redis `now` of the same call.
    const at = Date.now() + Math.max(0, r.nextWakeMs - r.nowMs) + 2;
    if (at >= wakeAt) {
      laterAt = Math.min(laterAt, at);
      return;
    }
    // The timer's time was handed here too: it waits behind the earlier one.
    if (wakeAt !== Infinity) laterAt = Math.min(laterAt, wakeAt);
    setWakeTimer(at);
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
  // Registers a moved ask if no claim has carried it by then.
  let askTimer: NodeJS.Timeout | undefined;
  /** The registration due now, taken: recorded as sent (a failed call gives it back with registrationLost). */
  const takeRegistration = (): DispatchingWorker | undefined => {
    const w = opts.worker;
    if (!w) return undefined;
    const at = clock();
    const ask = w.ask?.();
    if (at - registeredAt < renewEveryMs && ask === registeredAsk) return undefined;
    // The ask the last registration (not given back as failed) wrote: a renewal moves the expiry alone.
    const renewal = registeredAt !== -Infinity && ask === registeredAsk;
    registeredAt = at;
    registeredAsk = ask;
    return { id: w.id, concurrency: w.concurrency, ttlMs, ...(ask !== undefined ? { ask } : {}), ...(renewal ? { renewal } : {}) };
  };
  /** Nothing is known registered: the next call carries the registration (NaN equals no ask). */
  const forgetRegistration = () => {
    registeredAt = -Infinity;
    registeredAsk = NaN;
  };

  const run = async () => {
    do {
      pending = false;
      const register = takeRegistration();
      try {
        // This loop arms the wake-up it is handed: it takes it (a caller without a loop is only told it).
        const r = await opts.scheduler.dispatch(register, { takesWake: true });
        sweptAt = clock();
        arm(r);
        opts.onDispatch?.(r);
      } catch (err) {
        // Carried by the next call (a kick, a claim, the safety poll): no retry of its own while Redis fails.
        if (register) forgetRegistration();
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

  /**
   * When a call of this process last swept (this loop's dispatch, or a release's: `swept`). A throttled deployment's
   * workers release their jobs after every wake-up, each release sweeping as the poll would: the poll, one dispatch
   * call per worker per interval (4 workers: ~3 Redis commands a second), found nothing they had not. Skipped only
   * while the registration is younger than a poll interval and its ask unchanged: renewed by a claim, or by the next
   * poll, it never gets older than two intervals, within its ttl of three.
   */
  let sweptAt = -Infinity;
  const poll = setInterval(() => {
    const at = clock();
    const fresh = !opts.worker || (at - registeredAt < safetyPollMs && opts.worker.ask?.() === registeredAsk);
    if (at - sweptAt < safetyPollMs && fresh) return;
    void kick();
  }, safetyPollMs);
  poll.unref();

  const absorb = (r: DispatchResult) => {
    arm(r);
    opts.onDispatch?.(r);
    if (r.more) void kick();
  };
  const unsubscribe = opts.scheduler.onDispatched?.(absorb);

  function askMoved(): void {
    if (askTimer || closed) return;
    askTimer = setTimeout(() => {
      askTimer = undefined;
      // Still not the ask registered: no claim carried it (or it moved again since).
      if (opts.worker?.ask?.() !== registeredAsk) void kick();
    }, ASK_MOVE_GRACE_MS);
    askTimer.unref();
  }
  /** A claim's registration failed: registered by the next claim, or by a dispatch after the grace, as a moved ask is. */
  const registrationLost = () => {
    forgetRegistration();
    askMoved();
  };

  return {
    kick,
    absorb,
    takeRegistration,
    registrationLost,
    askMoved,
    swept() {
      sweptAt = clock();
    },
    sweepDue: () => clock() - sweptAt >= safetyPollMs / 2,
    async close() {
      closed = true;
      unsubscribe?.();
      clearInterval(poll);
      if (askTimer) clearTimeout(askTimer);
      if (wakeTimer) clearTimeout(wakeTimer);
      await running;
    },
  };
}
