import type { Counter } from 'prom-client';

/**
 * A label set made once per distinct value of its key and reused: the per-job metrics otherwise made several label
 * objects for every job. It holds one entry per series the metric itself keeps, so it grows no further than
 * prom-client's own map of them. Frozen: prom-client only reads the labels it is handed (and keeps the first it sees).
 */
export function labelCache<L extends object>(make: (a: string, b: string, c: string) => L) {
  const byA = new Map<string, Map<string, Map<string, Readonly<L>>>>();
  return (a: string, b = '', c = ''): Readonly<L> => {
    let byB = byA.get(a);
    if (!byB) byA.set(a, (byB = new Map()));
    let byC = byB.get(b);
    if (!byC) byB.set(b, (byC = new Map()));
    let labels = byC.get(c);
    if (!labels) byC.set(c, (labels = Object.freeze(make(a, b, c))));
    return labels;
  };
}

/**
 * Increments of a counter of whole numbers (tokens, jobs), summed here per label set (one of `labelCache`'s) and
 * handed to prom-client when the counter is read (its `collect`, which every read of the registry runs first):
 * prom-client hashes the labels of every `inc` (a few strings each), several times a job. Whole numbers add up
 * exactly in any order, so the counter reads what it would have. A value prom-client refuses is refused here, when
 * it is added, as `inc` would have.
 */
export function pendingIncs<L extends Partial<Record<string, string | number>>>() {
  const pending = new Map<Readonly<L>, number>();
  return {
    add(labels: Readonly<L>, value: number): void {
      if (value && !Number.isFinite(value)) throw new TypeError(`Value is not a valid number: ${value}`);
      if (value < 0) throw new Error('It is not possible to decrease a counter');
      pending.set(labels, (pending.get(labels) ?? 0) + value);
    },
    /** For the counter's `collect`: the sums so far into `counter`. */
    flush(counter: Counter<string>): void {
      for (const [labels, value] of pending) counter.inc(labels, value);
      pending.clear();
    },
  };
}
