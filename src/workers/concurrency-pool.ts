/** What the pool needs of a BullMQ worker: its fetch limit, which BullMQ reads before every fetch. */
export interface PooledWorker {
  concurrency: number;
}

/**
 * One process-wide concurrency shared by several BullMQ workers (one per queue shard): at most `limit` jobs
 * run at once whatever shard they come from. Each worker may fetch up to its own running jobs plus the
 * process's free slots, so an idle shard's worker still takes the next job it is given. The limit is lowered
 * as jobs enter, so a worker whose fetches were under way when the slots filled may hold a few jobs more than
 * it runs: those wait here for a slot (their locks kept alive by BullMQ), and never run beyond the limit.
 */
export function createConcurrencyPool(limit: number, onInFlight?: (jobs: number) => void) {
  if (!Number.isInteger(limit) || limit < 1) throw new RangeError(`concurrency must be a positive integer: ${limit}`);
  const members: Array<{ worker?: PooledWorker; inside: number }> = [];
  let running = 0;
  /** Jobs inside every member's processor (running or waiting for a slot): the sum of `inside`, kept as it moves. */
  let inside = 0;
  const queued: Array<() => void> = [];

  // BullMQ takes a concurrency of at least 1. Called whenever `inside` moved: `onInFlight` hears it too.
  function rebalance(): void {
    onInFlight?.(inside);
    const free = Math.max(0, limit - inside);
    for (const m of members) if (m.worker) m.worker.concurrency = Math.max(1, m.inside + free);
  }

  /** Waits for a slot (taken for the caller when it is passed on); called only when none is free. */
  function slot(): Promise<void> {
    return new Promise<void>((resolve) => queued.push(resolve));
  }

  function release(): void {
    const next = queued.shift();
    // The slot passes straight to the next waiter: `running` stays the same.
    if (next) next();
    else running--;
  }

  return {
    /** A place for one worker: `wrap` its processor, then `attach` the worker built with it. */
    member() {
      const member: { worker?: PooledWorker; inside: number; left?: boolean } = { inside: 0 };
      members.push(member);
      /**
       * A job enters this member's processor: undefined when it took a free slot at once (the body starts in this
       * tick, with no promise or turn of the microtask queue spent on waiting for nothing: most jobs, whenever the
       * pool is not full), else a promise that resolves once a slot was passed on to it.
       */
      const enter = (): Promise<void> | undefined => {
        member.inside++;
        inside++;
        rebalance();
        if (running < limit) {
          running++;
          return undefined;
        }
        return slot();
      };
      /** The job that entered has settled: its slot goes back (to the next waiter, if any). */
      const exit = (): void => {
        release();
        member.inside--;
        // A member that left took its jobs out of the count already.
        if (!member.left) inside--;
        rebalance();
      };
      return {
        attach(worker: PooledWorker) {
          member.worker = worker;
          rebalance();
        },
        /** The processor, run in one of the pool's slots; its third parameter (the attempt's cancellation) passed on. */
        wrap<J, T, C, R>(processor: (job: J, token?: T, cancel?: C) => Promise<R>): (job: J, token?: T, cancel?: C) => Promise<R> {
          return async (job, token, cancel) => {
            const wait = enter();
            try {
              if (wait) await wait;
              return await processor(job, token, cancel);
            } finally {
              exit();
            }
          };
        },
        /**
         * `wrap` in two halves, for a caller that runs the processor in an async function of its own anyway (the
         * agent worker): `enter` before it (await what it returns, if anything), `exit` once it has settled, however.
         */
        enter,
        exit,
        /** This member's jobs in the pool now: running, or fetched and waiting for a slot. */
        load: () => member.inside,
        leave() {
          members.splice(members.indexOf(member), 1);
          member.left = true;
          inside -= member.inside;
          rebalance();
        },
      };
    },
    /** Jobs running now (each holds a slot) and jobs fetched that wait for one. */
    stats: () => ({ running, waiting: queued.length }),
  };
}

export type ConcurrencyPool = ReturnType<typeof createConcurrencyPool>;
