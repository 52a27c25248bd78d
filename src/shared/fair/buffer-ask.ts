/** How long a rate sample runs before it replaces the last one (a few hundred jobs of short work). */
export const BUFFER_RATE_WINDOW_MS = 250;

/**
 * Most jobs a worker of lower concurrency asks for by time. The dispatcher refills the wait list in batches of
 * at least 8 jobs, or half a smaller target (fair-core-N.lua, bufferRoom): an ask of one job (concurrency 1) made
 * every claim dispatch the one job replacing it; asked for 16, short jobs are dispatched 8 at a time (at 8, 4 at
 * a time: each job's share of a dispatch's fixed part twice as large).
 */
export const SMALL_WORKER_MAX_ASK = 16;

/** The fixed share of the buffer a worker of `concurrency` asks for at `ratio` (DISPATCH_BUFFER_RATIO). */
export function fixedShare(ratio: number, concurrency: number): number {
  return Math.ceil(ratio * concurrency);
}

export interface BufferAsk {
  /** One of this worker's jobs finished (completed or failed). */
  finished(): void;
  /** The jobs of BullMQ's wait list this worker asks the dispatcher to keep for it, now. */
  ask(): number;
}

/**
 * A worker's share of the dispatch buffer. At least `ratio` x its concurrency, the fixed share fairness is
 * tuned with; and, for short jobs, about what the worker finishes in `floorMs` at its recent rate (within an
 * eighth, see `roll`; capped at its concurrency, or at SMALL_WORKER_MAX_ASK when that is more). A fixed share
 * sized for long model calls runs dry between two refills when jobs take a millisecond (cache hits): BullMQ then
 * refills a free slot one fetch at a time. Sized by time, the wait list holds about `floorMs` of work whatever the
 * jobs' length, so a job dispatched into it waits about that long at most, and long jobs keep the fixed share (a
 * worker finishing 100 jobs/s asks 4 at 40 ms: the fixed share of concurrency 10 at 0.5, 5, stands).
 * `onChange` is told when the ask moves, so the worker registers it again without waiting for its renewal.
 */
export function createBufferAsk(opts: {
  concurrency: number;
  ratio: number;
  /** 0: the fixed share only. */
  floorMs: number;
  onChange?: (ask: number) => void;
  now?: () => number;
}): BufferAsk {
  const clock = opts.now ?? Date.now;
  const fixed = fixedShare(opts.ratio, opts.concurrency);
  let windowStart = clock();
  let count = 0;
  let current = fixed;

  // Rolls the sample once it has run a window: the rate of the window just ended decides the ask.
  const roll = (at: number) => {
    const elapsed = at - windowStart;
    if (elapsed < BUFFER_RATE_WINDOW_MS) return;
    const byTime = Math.min(Math.max(opts.concurrency, SMALL_WORKER_MAX_ASK), Math.floor((count * opts.floorMs) / elapsed));
    windowStart = at;
    count = 0;
    const next = Math.max(fixed, byTime);
    // Moves only by more than an eighth and by two jobs or more, either way (back to the fixed share always):
    // each new ask is a dispatcher call to register it, and a rate that wobbles around a boundary (a worker
    // finishing 3 or 4 jobs in 40 ms, window after window) would register one every window. A list an eighth
    // or one job short of the floor's time still holds most of it.
    const moved = Math.abs(next - current);
    if (moved === 0 || (next !== fixed && moved <= Math.max(1, current / 8))) return;
    current = next;
    opts.onChange?.(next);
  };

  return {
    finished() {
      count++;
      if (opts.floorMs > 0) roll(clock());
    },
    ask() {
      if (opts.floorMs > 0) roll(clock());
      return current;
    },
  };
}
