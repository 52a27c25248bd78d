import { format } from 'node:util';
import { Counter, Histogram, type CounterConfiguration, type HistogramConfiguration } from 'prom-client';

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

/** Most values one series keeps before they go into the histogram at once: bounded however rarely the registry is read. */
export const PENDING_VALUES_MAX = 1024;

/** What prom-client 15's Histogram keeps per series, which `pendingObservations` adds to (test/metric-cells.test.ts checks it). */
interface HistogramCells {
  hashMap: Record<string, { bucketValues: Record<number, number>; sum: number; count: number } | undefined>;
  upperBounds: readonly number[];
  sortedLabelNames: readonly string[];
}

function hasCells(c: HistogramCells): boolean {
  return typeof c.hashMap === 'object' && c.hashMap !== null && Array.isArray(c.upperBounds) && Array.isArray(c.sortedLabelNames);
}

/** prom-client's key of a label set in `hashMap` (util.js hashObject, with the histogram's sorted label names). */
function seriesKey(names: readonly string[], labels: Partial<Record<string, string | number>>): string {
  let key = '';
  for (const name of names) {
    const value = labels[name];
    if (value !== undefined) key += `${name}:${value},`;
  }
  return key;
}

/**
 * Observations of a histogram, kept per label set (one of `labelCache`'s, or `NO_LABELS`) in the order made and
 * added to `histogram` when it is read (its `collect`, which every read of the registry runs first), or once a
 * series holds PENDING_VALUES_MAX. prom-client's `observe` makes a closure, an object and the label set's key for
 * each value (about 0.4 KB and 0.3-0.8 us, three or four a job); here a value is one push, and a series' key is made
 * once per hand-over. Each series' values are added one after the other in the order observed, its sum as
 * `observe` sums it, so the histogram reads exactly what it would have. A value prom-client refuses is refused here,
 * when it is observed, as `observe` would have.
 */
export function pendingObservations<L extends Partial<Record<string, string | number>>>(histogram: Histogram<string>) {
  const pending = new Map<Readonly<L>, number[]>();
  const cells = histogram as unknown as HistogramCells;
  // A prom-client whose Histogram keeps its series otherwise (an upgrade past 15) gets each value by `observe`, as
  // before: slower, never wrong. The test fails on such an upgrade, so the fast path is not lost unnoticed.
  if (!hasCells(cells)) return { observe: (labels: Readonly<L>, value: number) => histogram.observe(labels as never, value), flush: () => {} };
  const handOver = (labels: Readonly<L>, values: number[]): void => {
    const key = seriesKey(cells.sortedLabelNames, labels);
    if (!cells.hashMap[key]) histogram.zero(labels as never);
    const series = cells.hashMap[key]!;
    const bounds = cells.upperBounds;
    let sum = series.sum;
    for (const value of values) {
      sum += value;
      // The first bucket the value fits, as prom-client's findBound; past the last one it is counted in +Inf alone.
      for (let i = 0; i < bounds.length; i++) {
        if (value <= bounds[i]) {
          series.bucketValues[bounds[i]] += 1;
          break;
        }
      }
    }
    series.sum = sum;
    series.count += values.length;
  };
  return {
    observe(labels: Readonly<L>, value: number): void {
      if (!Number.isFinite(value)) throw new TypeError(`Value is not a valid number: ${format(value)}`);
      let values = pending.get(labels);
      if (!values) pending.set(labels, (values = []));
      values.push(value);
      if (values.length >= PENDING_VALUES_MAX) {
        pending.delete(labels);
        handOver(labels, values);
      }
    },
    /** For the histogram's `collect`: the values so far into it. */
    flush(): void {
      for (const [labels, values] of pending) handOver(labels, values);
      pending.clear();
    },
  };
}

/** The label set of a histogram without labels, for `pendingObservations`. */
export const NO_LABELS: Readonly<Record<string, never>> = Object.freeze({});

/**
 * A histogram registered with its pending values flushed on every read: the one place its `collect` is written.
 * The histogram itself is not handed out, so every value goes through `observe` here.
 */
export function pendingHistogram<L extends Partial<Record<string, string | number>>>(config: Omit<HistogramConfiguration<string>, 'collect'>) {
  const obs: ReturnType<typeof pendingObservations<L>> = pendingObservations<L>(
    new Histogram({
      ...config,
      collect() {
        obs.flush();
      },
    }),
  );
  return obs;
}

/** A counter of whole numbers registered with its pending sums flushed on every read (see `pendingIncs`). */
export function pendingCounter<L extends Partial<Record<string, string | number>>>(config: Omit<CounterConfiguration<string>, 'collect'>) {
  const incs = pendingIncs<L>();
  new Counter({
    ...config,
    collect() {
      incs.flush(this);
    },
  });
  return incs;
}
