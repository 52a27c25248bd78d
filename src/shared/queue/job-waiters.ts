import type { QueueEvents } from 'bullmq';

/** Queue events that end a wait: the job finished, or it was removed (a cancelled waiting job). */
const ENDING_EVENTS = ['completed', 'failed', 'removed'] as const;

export interface JobWaiters {
  /**
   * Resolves when job `id` completes, fails or is removed, or after `ms`, whichever comes first (never
   * rejects). `settled` is read once the events are live, so a job that finished just before is not missed.
   */
  wait(id: string, ms: number, settled: () => Promise<boolean>): Promise<void>;
  /** Jobs with at least one waiter, and waiters in all (for tests and metrics). */
  size(): { jobs: number; waiters: number };
}

/**
 * Long polls on many jobs over one set of `QueueEvents` listeners. BullMQ's `job.waitUntilFinished` adds two
 * listeners per waiter to the QueueEvents and one to the Queue, so a few dozen polls on one job print
 * `MaxListenersExceededWarning` and every event is offered to every waiter. Here the listeners are
 * attached once per QueueEvents, and each event goes straight to the waiters of its job (a Map lookup).
 */
export function createJobWaiters(queueEvents: () => QueueEvents): JobWaiters {
  const waiting = new Map<string, Set<() => void>>();
  let attached: QueueEvents | undefined;

  const wake = ({ jobId }: { jobId: string }) => {
    const set = waiting.get(jobId);
    if (!set) return;
    waiting.delete(jobId);
    for (const done of set) done();
  };

  function events(): QueueEvents {
    const qe = queueEvents();
    if (attached !== qe) {
      for (const e of ENDING_EVENTS) qe.on(e, wake);
      attached = qe;
    }
    return qe;
  }

  return {
    async wait(id, ms, settled) {
      if (ms <= 0) return;
      const qe = events();
      let done!: () => void;
      const ended = new Promise<void>((resolve) => (done = resolve));
      const finish = () => {
        clearTimeout(timer);
        const set = waiting.get(id);
        set?.delete(finish);
        if (set?.size === 0) waiting.delete(id);
        done();
      };
      const timer = setTimeout(finish, ms);
      let set = waiting.get(id);
      if (!set) waiting.set(id, (set = new Set()));
      set.add(finish);
      try {
        await qe.waitUntilReady();
        if (await settled()) finish();
      } catch {
        // Events unavailable (Redis down): the timer still ends the wait.
      }
      return ended;
    },

    size() {
      let waiters = 0;
      for (const set of waiting.values()) waiters += set.size;
      return { jobs: waiting.size, waiters };
    },
  };
}
