/** How long a rate sample runs before it replaces the last one (a few hundred jobs of short work). */
export const BUFFER_RATE_WINDOW_MS = 250;

/**
 * Most jobs a worker of lower concurrency asks for by time. The dispatcher refills the wait list once it lacks all
 * but one of a target of 16 or less, in batches of at least 8 above (fair-core-N.lua, bufferRoom): an ask of one job
 * (concurrency 1) made every claim dispatch the one job replacing it; asked for 16, short jobs are dispatched 15 at a
 * time (8 until 2026-12-08; at 8, 7 at a time; at half a smaller target, until 2026-12-07, 4: each job's share of a
 * dispatch's fixed part twice as large).
 */
export const SMALL_WORKER_MAX_ASK = 16;

/** The fixed share of the buffer a worker of `concurrency` asks for at `ratio` (DISPATCH_BUFFER_RATIO). */
export function fixedShare(ratio: number, concurrency: number): number {
  return Math.ceil(ratio * concurrency);
}

export interface BufferAsk {
  /**
   * One of this worker's runs ended with an outcome (a result or a failure; a park or a delay is none), as its
   * processor returns: once per attempt, whatever BullMQ then records (an attempt that lost its lock gets no
   * completed or failed event, and took a job from the wait list all the same).
   */
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
 * A rise follows the window just ended; a fall, the rate over it and the one before (`rateOf`).
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
  let last: RateSample = { count: 0, elapsedMs: 0 };

  // Rolls the sample once it has run a window: the window just ended (with the one before, for a fall) decides the ask.
  const roll = (at: number) => {
    const elapsed = at - windowStart;
    if (elapsed < BUFFER_RATE_WINDOW_MS) return;
    const sample = { count, elapsedMs: elapsed };
    const next = rolledAsk({ ...opts, fixed, current, ...rateOf(sample, last) });
    last = sample;
    windowStart = at;
    count = 0;
    if (next === current) return;
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

/** Jobs finished in one rate window, and its length. */
interface RateSample {
  count: number;
  elapsedMs: number;
}

/**
 * The rate an ask is sized by (jobs in a time) when the window `now` has just ended: its own when that is higher (a rise
 * follows one window), else the rate over it and the window before, `last`, weighted by their lengths. A single window
 * of a slower rate is mostly a stall, not slower jobs: a loaded host or a GC pause that halted the process for 80 ms
 * made the jobs after it (5 ms each again) a window at the fixed share, 1 at concurrency 1, and each of its claims
 * dispatched the one job it took (~51 Redis commands a job instead of ~24-30; the commands case's MONITOR, 26 of 114
 * dispatches). Jobs that did get longer fall at once all the same: a window of long jobs (model calls) lasts as long
 * as they do and outweighs the 250 ms before it (after 45 short jobs, one of 2 s: 20 jobs/s, the fixed share), and
 * an idle second does too. A slower rate that lasts is the ask a window later, so a list sized by a rate that fell
 * holds at most one window's worth of the old rate's jobs more, each waiting about `floorMs` at the two windows' rate.
 * A rise is not taken early from a part of a window either: jobs started together (a bulk enqueue at concurrency 50)
 * finish in a burst, a rate many times the window's.
 */
function rateOf(now: RateSample, last: RateSample): RateSample {
  const both = { count: now.count + last.count, elapsedMs: now.elapsedMs + last.elapsedMs };
  // Compared and divided as counts over times (not a rate in jobs/ms): the ask of a whole number of jobs in a window
  // (25 in 250 ms: 4 in 40) stays whole, not a float a hair below it.
  return now.count * both.elapsedMs >= both.count * now.elapsedMs ? now : both;
}

/** The ask after a rate window, `count` jobs finished in `elapsedMs` (rateOf): `current` unless it moved enough. */
function rolledAsk(o: { concurrency: number; floorMs: number; fixed: number; current: number } & RateSample): number {
  const byTime = Math.min(Math.max(o.concurrency, SMALL_WORKER_MAX_ASK), Math.floor((o.count * o.floorMs) / o.elapsedMs));
  const next = Math.max(o.fixed, byTime);
  // Moves only by more than an eighth and by two jobs or more, either way (back to the fixed share always):
  // each new ask is a dispatcher call to register it, and a rate that wobbles around a boundary (a worker
  // finishing 3 or 4 jobs in 40 ms, window after window) would register one every window. A list an eighth
  // or one job short of the floor's time still holds most of it.
  const moved = Math.abs(next - o.current);
  return moved === 0 || (next !== o.fixed && moved <= Math.max(1, o.current / 8)) ? o.current : next;
}

export interface SharedBufferAsk {
  /**
   * The ask of one shard's worker (call once per shard, up to `shards`). `load`: that worker's jobs in the process's
   * pool now (running or waiting for a slot); `onChange` is told when its ask moves, as createBufferAsk's is.
   */
  member(opts: { load: () => number; onChange?: (ask: number) => void }): BufferAsk;
}

/**
 * One process's dispatch buffer shared by its queue shards' workers (QUEUE_SHARDS > 1, one concurrency pool for
 * all). Each shard has a dispatcher of its own, which keeps that shard's wait list at its workers' asks: a full
 * createBufferAsk each let one process hold S times the documented ratio x concurrency dispatched and not running,
 * each job charged to its org's caps while it waits. Here the process's ask is computed once, as createBufferAsk
 * computes a worker's (the ratio's share of the whole concurrency, or what the whole process finishes in `floorMs`),
 * and split over the shards: every shard one job (a shard asking for none would never be dispatched to: its wait
 * list's target would be 0), the rest by demand, each shard's jobs in the pool plus those it finished in the last
 * rate window (running jobs show long calls, finished ones short jobs). The asks sum to the process's ask (or to
 * the shard count when that is more).
 * Split by demand, not in even shares of ratio x concurrency / S: the pool lets one shard run every slot when its
 * orgs carry the load, and an even share would leave that shard a list 1/S as deep as the documented one (a refill
 * of one or two jobs per dispatch, so a dispatch's fixed cost per job or two) while the idle shards' shares hold
 * nothing. The split moves only when a shard's ask moves by more than an eighth and by two jobs or more (or the
 * process's ask moved, or everything idles), for the reason createBufferAsk's ask does: each move is a registration.
 * A move is registered by each shard's worker on its own (its next claim, or a dispatch after ASK_MOVE_GRACE_MS),
 * so while one is under way the registered asks may sum to a little more for that long.
 */
export function createSharedBufferAsk(opts: {
  concurrency: number;
  ratio: number;
  /** 0: the fixed share only (still split by demand). */
  floorMs: number;
  /** The queue shards, one member each. */
  shards: number;
  now?: () => number;
}): SharedBufferAsk {
  if (!Number.isInteger(opts.shards) || opts.shards < 1) throw new RangeError(`shards must be a positive integer: ${opts.shards}`);
  const clock = opts.now ?? Date.now;
  const fixed = fixedShare(opts.ratio, opts.concurrency);
  const zero = Array.from({ length: opts.shards }, () => 0);
  const members: Array<{ count: number; load: () => number; onChange?: (ask: number) => void }> = [];
  let total = fixed;
  let asks = splitAsk(total, zero);
  let windowStart = clock();
  let last: RateSample = { count: 0, elapsedMs: 0 };

  const roll = (at: number) => {
    const elapsed = at - windowStart;
    if (elapsed < BUFFER_RATE_WINDOW_MS) return;
    const sample = { count: members.reduce((sum, m) => sum + m.count, 0), elapsedMs: elapsed };
    const nextTotal = rolledAsk({ ...opts, fixed, current: total, ...rateOf(sample, last) });
    last = sample;
    // A shard without a worker here yet (or any more) has no demand.
    const demand = zero.map((_, i) => (members[i] ? members[i].count + members[i].load() : 0));
    windowStart = at;
    for (const m of members) m.count = 0;
    const idle = demand.every((d) => d === 0);
    const next = splitAsk(nextTotal, demand);
    const moved = next.some((a, i) => Math.abs(a - asks[i]) > Math.max(1, asks[i] / 8));
    if (nextTotal === total && !moved && !(idle && next.some((a, i) => a !== asks[i]))) return;
    total = nextTotal;
    const before = asks;
    asks = next;
    next.forEach((a, i) => a !== before[i] && members[i]?.onChange?.(a));
  };

  return {
    member(m) {
      const i = members.length;
      if (i >= opts.shards) throw new RangeError(`a shared buffer ask for ${opts.shards} shards has no place for another`);
      const member = { count: 0, load: m.load, ...(m.onChange ? { onChange: m.onChange } : {}) };
      members.push(member);
      return {
        finished() {
          member.count++;
          roll(clock());
        },
        ask() {
          roll(clock());
          return asks[i];
        },
      };
    },
  };
}

/**
 * `total` split over the shards by `demand`: one job each, the rest in proportion (evenly when no shard has any),
 * whole jobs by largest remainder (ties to the lower shard), so the asks sum to `total`, or to the shards when more.
 */
export function splitAsk(total: number, demand: number[]): number[] {
  const rest = Math.max(0, total - demand.length);
  const sum = demand.reduce((a, b) => a + b, 0);
  const quota = demand.map((d) => (sum > 0 ? (rest * d) / sum : rest / demand.length));
  const asks = quota.map((q) => 1 + Math.floor(q));
  let left = rest - quota.reduce((a, q) => a + Math.floor(q), 0);
  const byRemainder = quota.map((q, i) => ({ i, r: q - Math.floor(q) })).sort((a, b) => b.r - a.r || a.i - b.i);
  for (const { i } of byRemainder) {
    if (left <= 0) break;
    asks[i]++;
    left--;
  }
  return asks;
}
