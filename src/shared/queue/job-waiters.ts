import { setTimeout as sleep } from 'node:timers/promises';
import type { QueueEvents } from 'bullmq';

/** Queue events that end a wait: the job finished, or it was removed (a cancelled waiting job). */
const ENDING_EVENTS = ['completed', 'failed', 'removed'] as const;
/**
 * Any of these shows the QueueEvents reader has consumed an entry, so its cursor is a concrete stream id from
 * then on (BullMQ starts it at `$` and re-issues `$` after every empty XREAD until the first entry arrives).
 */
const CURSOR_EVENTS = ['added', 'waiting', 'active', 'delayed', 'progress', 'drained'] as const;

/** Re-checks of a waiter registered before its process's events reader was live: first pause, and the longest. */
const VERIFY_FIRST_PAUSE_MS = 50;
const VERIFY_MAX_PAUSE_MS = 1000;

/** Why a wait ended: the job's ending event, the caller's `settled` check, the timeout, or the process closing. */
export type WaitEnd = (typeof ENDING_EVENTS)[number] | 'settled' | 'timeout' | 'closing';

export interface JobWaiter {
  /** Resolves with why the wait ended (never rejects). */
  ended: Promise<WaitEnd>;
  /**
   * The events reader had a concrete cursor when the waiter was registered: every event written after this
   * moment reaches the waiter, so a read made after registration needs no re-check. False for the first
   * polls of a process (its reader may still be at `$`, where an event written before its first XREAD is
   * never delivered): then the caller must pass a `settled` check to `verify`.
   */
  live: boolean;
  /**
   * When not live: waits for the events connection and ends the wait once `settled()` says the job is done,
   * checking again (backing off to 1 s) until the events reader is live.
   */
  verify(settled: () => Promise<boolean>): Promise<void>;
  /** Ends the wait now (the caller's read already saw the job finished). */
  cancel(): void;
}

export interface JobWaiters {
  /**
   * Registers a waiter on job `id` before the caller reads the job, so a finish between that read and the
   * wait cannot be missed. Ends on its job's completed/failed/removed event, `cancel`, or after `ms`.
   */
  register(id: string, ms: number): JobWaiter;
  /**
   * For a caller that read the job before waiting: resolves when job `id` completes, fails or is removed,
   * or after `ms`, whichever comes first (never rejects). `settled` is read once the events are live, so a
   * job that finished just before is not missed.
   */
  wait(id: string, ms: number, settled: () => Promise<boolean>): Promise<void>;
  /**
   * Ends every wait now, as its timeout would (the caller answers the job's current state and the client polls
   * again), and every wait registered later at once: an API process that is closing answers its long polls
   * instead of holding its shutdown for up to LONG_POLL_MAX_MS, which outlasts a container's stop timeout.
   */
  endAll(): void;
  /** Jobs with at least one waiter, and waiters in all (for tests and metrics). */
  size(): { jobs: number; waiters: number };
  /** Whether a waiter registered now would be live (for tests). */
  live(): boolean;
}

/**
 * Long polls on many jobs over one set of `QueueEvents` listeners. BullMQ's `job.waitUntilFinished` adds two
 * listeners per waiter to the QueueEvents and one to the Queue, so a few dozen polls on one job print
 * `MaxListenersExceededWarning` and every event is offered to every waiter. Here the listeners are
 * attached once per QueueEvents, and each event goes straight to the waiters of its job (a Map lookup).
 */
export function createJobWaiters(queueEvents: () => QueueEvents): JobWaiters {
  const waiting = new Map<string, Set<(end: WaitEnd) => void>>();
  let attached: QueueEvents | undefined;
  let live = false;
  /** endAll was called: a wait registered from now on (a poll still in its first read) ends at once too. */
  let closing = false;

  const onCursor = () => {
    live = true;
  };
  const wakers = ENDING_EVENTS.map((event) => ({
    event,
    wake: ({ jobId }: { jobId: string }) => {
      live = true;
      const set = waiting.get(jobId);
      if (!set) return;
      waiting.delete(jobId);
      for (const done of set) done(event);
    },
  }));

  function events(): QueueEvents {
    const qe = queueEvents();
    if (attached !== qe) {
      for (const { event, wake } of wakers) qe.on(event, wake);
      for (const e of CURSOR_EVENTS) qe.on(e, onCursor);
      attached = qe;
      live = false;
    }
    return qe;
  }

  function register(id: string, ms: number): JobWaiter {
    const qe = events();
    const wasLive = live;
    let done!: (end: WaitEnd) => void;
    const ended = new Promise<WaitEnd>((resolve) => (done = resolve));
    let over = false;
    const finish = (end: WaitEnd) => {
      if (over) return;
      over = true;
      clearTimeout(timer);
      const set = waiting.get(id);
      set?.delete(finish);
      if (set?.size === 0) waiting.delete(id);
      done(end);
    };
    const timer = setTimeout(() => finish('timeout'), ms);
    let set = waiting.get(id);
    if (!set) waiting.set(id, (set = new Set()));
    set.add(finish);
    if (closing) finish('closing');
    return {
      ended,
      live: wasLive,
      async verify(settled) {
        try {
          await qe.waitUntilReady();
          // A ready connection is not a reading reader: its first XREAD (at `$`) can come well after (a cluster
          // client maps the slots first), and an ending event written before it is never delivered. So the
          // check repeats, backing off, until the reader is live. `live` is read before the check: live then,
          // every later finish is delivered, and this check saw everything earlier.
          for (let pause = VERIFY_FIRST_PAUSE_MS; !over; pause = Math.min(2 * pause, VERIFY_MAX_PAUSE_MS)) {
            const liveBefore = live;
            if (await settled()) return finish('settled');
            if (liveBefore || over) return;
            await Promise.race([ended, sleep(pause, undefined, { ref: false })]);
          }
        } catch {
          // Events unavailable (Redis down): the timer still ends the wait.
        }
      },
      cancel: () => finish('settled'),
    };
  }

  return {
    register,

    async wait(id, ms, settled) {
      if (ms <= 0) return;
      const waiter = register(id, ms);
      await waiter.verify(settled);
      await waiter.ended;
    },

    endAll() {
      closing = true;
      for (const set of [...waiting.values()]) for (const finish of [...set]) finish('closing');
    },

    size() {
      let waiters = 0;
      for (const set of waiting.values()) waiters += set.size;
      return { jobs: waiting.size, waiters };
    },

    live: () => attached === queueEvents() && live,
  };
}
