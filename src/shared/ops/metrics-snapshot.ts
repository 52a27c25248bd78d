interface Sample {
  value: number;
  labels: Record<string, string | number | undefined>;
  metricName?: string;
}

/** One registry's `getMetricsAsJSON()`, as JSON carries it between processes. */
export type Snapshot = Array<{ name: string; help: string; type: string; aggregator?: string; values: Sample[] }>;

/**
 * What of a process outlives it in the exchange's sum: counters and histograms only (a gauge says how things
 * are in a live process), and never a series labelled with its `process` (the Node defaults: one series per
 * process, which must leave with it, or every process ever started would add series forever).
 */
function carried(metric: Snapshot[number], sample: Sample): boolean {
  return (metric.type === 'counter' || metric.type === 'histogram') && sample.labels.process === undefined;
}

const sampleKey = (s: Sample) =>
  `${s.metricName ?? ''}\u0000${Object.keys(s.labels)
    .sort()
    .map((k) => `${k}=${String(s.labels[k])}`)
    .join('\u0000')}`;

/** The part of a departed process's snapshot that is folded into the retired totals. */
export function departedPart(snapshot: Snapshot): Snapshot {
  return snapshot.flatMap((m) => {
    const values = m.values.filter((s) => carried(m, s));
    return values.length ? [{ ...m, values }] : [];
  });
}

/** `snapshot` without what `counted` (an earlier snapshot of the same registry) already put in the retired totals. */
export function minus(snapshot: Snapshot, counted: Snapshot | undefined): Snapshot {
  if (!counted) return snapshot;
  const before = new Map<string, number>();
  for (const m of counted) for (const s of m.values as Sample[]) if (carried(m, s)) before.set(`${m.name}\u0000${sampleKey(s)}`, s.value);
  return snapshot.map((m) => ({
    ...m,
    values: m.values.map((s) => (carried(m, s) ? { ...s, value: s.value - (before.get(`${m.name}\u0000${sampleKey(s)}`) ?? 0) } : s)),
  }));
}
