import { describe, expect, it } from 'vitest';
import { BUFFER_RATE_WINDOW_MS, createBufferAsk, createSharedBufferAsk, SMALL_WORKER_MAX_ASK, splitAsk } from '../src/shared/fair/buffer-ask.js';

/** A worker's ask with a clock the test moves; `finish(n, overMs)` finishes n jobs evenly over overMs. */
function askWith(o: { concurrency: number; ratio: number; floorMs: number }) {
  let clock = 0;
  const changes: number[] = [];
  const a = createBufferAsk({ ...o, now: () => clock, onChange: (n) => changes.push(n) });
  return {
    a,
    changes,
    finish(n: number, overMs: number) {
      const start = clock;
      for (let i = 1; i <= n; i++) {
        clock = start + (overMs * i) / n;
        a.finished();
      }
    },
    /** Each count of jobs finished over one rate window, and the ask after it. */
    windows(counts: number[]) {
      return counts.map((n) => {
        this.finish(n, BUFFER_RATE_WINDOW_MS);
        return a.ask();
      });
    },
    idle(ms: number) {
      clock += ms;
    },
  };
}

describe('buffer ask', () => {
  it("is the fixed share of the concurrency until jobs finish fast enough to drain it in the floor's time", () => {
    const w = askWith({ concurrency: 50, ratio: 0.5, floorMs: 40 });
    expect(w.a.ask()).toBe(25);
    // Jobs finished in one rate window -> the ask: 400 jobs/s (16 in 40 ms, below the fixed 25), 1,000 jobs/s
    // (40), 4,000 jobs/s (capped at the concurrency).
    expect(w.windows([100, 250, 1000])).toEqual([25, 40, 50]);
    expect(w.changes).toEqual([40, 50]);
  });

  it('shrinks only by more than an eighth, and back to the fixed share once the worker idles', () => {
    const w = askWith({ concurrency: 50, ratio: 0.5, floorMs: 40 });
    // 4,000 jobs/s (50); 1,200 jobs/s (48 in 40 ms, within an eighth of 50: stays); 1,000 jobs/s, twice (a fall
    // is sized by the last two windows: 1,100 jobs/s (44) is within an eighth, then 1,000 (40) is not: shrinks).
    expect(w.windows([1000, 300, 250, 250])).toEqual([50, 50, 50, 40]);
    // Nothing finishes for a second: the window that ends saw no jobs (with the 250 ms before it, 8 in 40 ms).
    w.idle(1_000);
    expect(w.a.ask()).toBe(25);
    expect(w.changes).toEqual([50, 40, 25]);
  });

  it('does not register an ask that wobbles by one job or by an eighth, either way', () => {
    const one = askWith({ concurrency: 1, ratio: 0.5, floorMs: 40 });
    // 100 jobs/s (4 in 40 ms), then a rate wobbling around it: 76 / 100 / 124 / 80 jobs/s (3, 4, 4, 3 in 40 ms).
    expect(one.windows([25, 19, 25, 31, 20])).toEqual([4, 4, 4, 4, 4]);
    // Two jobs fewer (2 in 40 ms) moves it; back to the fixed share (1) when nothing finishes.
    expect(one.windows([13])).toEqual([2]);
    one.idle(1_000);
    expect(one.a.ask()).toBe(1);
    expect(one.changes).toEqual([4, 2, 1]);
    // A larger ask: from the fixed 50 to 64 in 40 ms moves; growth by an eighth or less (64 -> 70) stays at 64
    // too, more than that (73) moves.
    const big = askWith({ concurrency: 100, ratio: 0.5, floorMs: 40 });
    expect(big.windows([400, 440, 460])).toEqual([64, 64, 73]);
    expect(big.changes).toEqual([64, 73]);
  });

  it('falls by the rate of its last two windows: a one-window dip (a stalled host) keeps a batch, slower jobs fall at once', () => {
    const one = askWith({ concurrency: 1, ratio: 0.5, floorMs: 40 });
    // 180 jobs/s (7 in 40 ms); then a window in which the process was halted for most of it (40 jobs/s: 1 in 40
    // ms, the fixed share, which refills the list one job per claim): with the window before, 110 jobs/s, 4.
    expect(one.windows([45, 10])).toEqual([7, 4]);
    // Short jobs again: the window's own rate rises at once. A slowdown that lasts falls to the fixed share a
    // window later.
    expect(one.windows([45, 10, 10])).toEqual([7, 4, 1]);
    // Short jobs, then one long job (a model call of 2 s): its window outweighs the 250 ms before, the fixed share.
    expect(one.windows([45])).toEqual([7]);
    one.finish(1, 2_000);
    expect(one.a.ask()).toBe(1);
    // An idle second after short jobs: the fixed share too.
    expect(one.windows([45])).toEqual([7]);
    one.idle(1_000);
    expect(one.a.ask()).toBe(1);
    expect(one.changes).toEqual([7, 4, 7, 4, 1, 7, 1, 7, 1]);
  });

  it('lets a worker of low concurrency ask for up to SMALL_WORKER_MAX_ASK short jobs, so the dispatcher refills in batches', () => {
    const one = askWith({ concurrency: 1, ratio: 0.5, floorMs: 40 });
    expect(one.a.ask()).toBe(1);
    // 100 jobs/s (4 in 40 ms), then 1,000 jobs/s (40 in 40 ms: capped at 16, not at the concurrency 1).
    expect(SMALL_WORKER_MAX_ASK).toBe(16);
    expect(one.windows([25, 250])).toEqual([4, SMALL_WORKER_MAX_ASK]);
    // Below the cap, a worker of concurrency 10 may ask for more than its concurrency too.
    const ten = askWith({ concurrency: 10, ratio: 0.5, floorMs: 40 });
    expect(ten.windows([1000])).toEqual([SMALL_WORKER_MAX_ASK]);
    // Concurrency above the cap: the concurrency caps it, as before.
    const twenty = askWith({ concurrency: 20, ratio: 0.5, floorMs: 40 });
    expect(twenty.windows([1000])).toEqual([20]);
  });

  it('keeps the fixed share of long jobs and with the floor off', () => {
    const long = askWith({ concurrency: 10, ratio: 0.5, floorMs: 40 });
    // 120 jobs/s (jobs of ~80 ms at concurrency 10): 4.8 jobs in 40 ms, below the fixed 5.
    long.finish(30, BUFFER_RATE_WINDOW_MS);
    expect(long.a.ask()).toBe(5);
    const off = askWith({ concurrency: 50, ratio: 0.5, floorMs: 0 });
    off.finish(5000, BUFFER_RATE_WINDOW_MS);
    off.idle(BUFFER_RATE_WINDOW_MS);
    expect(off.a.ask()).toBe(25);
    expect([...long.changes, ...off.changes]).toEqual([]);
  });

  it('splits a process ask over its shards: one job each, the rest by demand, summing to the ask', () => {
    const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
    // No demand: even shares, the odd jobs to the lower shards.
    expect(splitAsk(25, Array(12).fill(0))).toEqual([3, ...Array(11).fill(2)]);
    // One shard with every job: the rest of the ask once each shard has its one.
    expect(splitAsk(25, [50, ...Array(11).fill(0)])).toEqual([14, ...Array(11).fill(1)]);
    expect(splitAsk(8, [3, 1, 0, 0])).toEqual([4, 2, 1, 1]);
    // Fewer jobs than shards: one each (a shard asking none would never be dispatched to).
    expect(splitAsk(5, Array(12).fill(7))).toEqual(Array(12).fill(1));
    for (const demand of [[1, 2, 3], [7, 7, 7], [0.5, 9, 100]]) expect(sum(splitAsk(17, demand))).toBe(17);
  });
});

/** The shared ask of `shards` workers with a clock the test moves, each member with a load the test sets. */
function sharedWith(o: { concurrency: number; ratio: number; floorMs: number; shards: number }) {
  let clock = 0;
  const loads = Array(o.shards).fill(0) as number[];
  const changes: Array<[number, number]> = [];
  const shared = createSharedBufferAsk({ ...o, now: () => clock });
  const members = loads.map((_, i) => shared.member({ load: () => loads[i], onChange: (n) => changes.push([i, n]) }));
  return {
    loads,
    changes,
    asks: () => members.map((m) => m.ask()),
    /** One rate window in which member i finished finished[i] jobs (counted at its start), and the asks at its end. */
    window(finished: number[]) {
      finished.forEach((n, i) => {
        for (let k = 0; k < n; k++) members[i].finished();
      });
      clock += BUFFER_RATE_WINDOW_MS;
      return this.asks();
    },
  };
}

describe('buffer ask shared by the queue shards of a process', () => {
  it('asks for the ratio of the whole concurrency once, split evenly while idle and by demand under load', () => {
    const p = sharedWith({ concurrency: 16, ratio: 0.5, floorMs: 0, shards: 4 });
    expect(p.asks()).toEqual([2, 2, 2, 2]);
    // Long jobs of shard 0 fill the pool: its jobs there are the demand.
    p.loads[0] = 16;
    expect(p.window([1, 0, 0, 0])).toEqual([5, 1, 1, 1]);
    expect(p.changes).toEqual([[0, 5], [1, 1], [2, 1], [3, 1]]);
    // Everything idle again: the even split.
    p.loads[0] = 0;
    expect(p.window([0, 0, 0, 0])).toEqual([2, 2, 2, 2]);
  });

  it("grows with the whole process's rate, up to its concurrency in all, and the busy shard gets it", () => {
    const p = sharedWith({ concurrency: 50, ratio: 0.5, floorMs: 40, shards: 12 });
    expect(p.asks()).toEqual([3, ...Array(11).fill(2)]);
    // 4,000 jobs/s of short jobs, all of shard 3: the process asks for its concurrency, 50, shard 3 for 39 of it.
    const asks = p.window([0, 0, 0, 1000, 0, 0, 0, 0, 0, 0, 0, 0]);
    expect(asks[3]).toBe(39);
    expect(asks.reduce((a, b) => a + b, 0)).toBe(50);
    // The same rate spread over two shards: split between them.
    expect(p.window([0, 0, 0, 500, 500, 0, 0, 0, 0, 0, 0, 0]).slice(3, 5)).toEqual([20, 20]);
  });

  it('does not move for a wobble of the demand by one job', () => {
    const p = sharedWith({ concurrency: 16, ratio: 0.5, floorMs: 0, shards: 4 });
    p.loads.splice(0, 4, 4, 4, 4, 4);
    expect(p.window([0, 0, 0, 0])).toEqual([2, 2, 2, 2]);
    // 6/3/4/3 of 16: shares of 1.5/0.75/1/0.75 jobs beyond the one each, moves of one job at most.
    p.loads.splice(0, 4, 6, 3, 4, 3);
    expect(p.window([0, 0, 0, 0])).toEqual([2, 2, 2, 2]);
    expect(p.changes).toEqual([]);
  });
});
