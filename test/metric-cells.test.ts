import { Counter, Histogram, Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { labelCache, NO_LABELS, PENDING_VALUES_MAX, pendingIncs, pendingObservations } from '../src/shared/ops/metric-cells.js';

const valueOf = async (registry: Registry, labels: Record<string, string>) => {
  const [metric] = await registry.getMetricsAsJSON();
  return metric.values.find((v) => Object.entries(labels).every(([k, x]) => v.labels[k] === x))?.value;
};

describe('metric cells', () => {
  it('hands a label set made once per key, each key its own', () => {
    const labels = labelCache((agent, model, direction) => ({ agent, model, direction }));
    expect(labels('a', 'm', 'input')).toBe(labels('a', 'm', 'input'));
    expect(labels('a', 'm', 'output')).toEqual({ agent: 'a', model: 'm', direction: 'output' });
    expect(labels('a', 'm', 'output')).not.toBe(labels('a', 'm', 'input'));
    expect(Object.isFrozen(labels('b', 'm', 'input'))).toBe(true);
  });

  it('a counter read between increments reads every increment made before the read, once', async () => {
    const registry = new Registry();
    const incs = pendingIncs();
    const labels = labelCache((level) => ({ level }));
    new Counter({ name: 't_total', help: 't', labelNames: ['level'], registers: [registry], collect() { incs.flush(this); } });
    incs.add(labels('l1'), 2);
    incs.add(labels('l1'), 3);
    incs.add(labels('l2'), 0);
    expect(await valueOf(registry, { level: 'l1' })).toBe(5);
    // A series counted 0 is shown, as inc(labels, 0) shows it.
    expect(await valueOf(registry, { level: 'l2' })).toBe(0);
    incs.add(labels('l1'), 4);
    expect(await valueOf(registry, { level: 'l1' })).toBe(9);
    expect(await valueOf(registry, { level: 'l1' })).toBe(9);
  });

  it('refuses what prom-client refuses, when it is added', () => {
    const incs = pendingIncs();
    expect(() => incs.add({ level: 'l1' }, -1)).toThrow('It is not possible to decrease a counter');
    expect(() => incs.add({ level: 'l1' }, Infinity)).toThrow(TypeError);
  });

  it('a histogram observed through pendingObservations reads exactly as one observed value by value, at every read', async () => {
    const buckets = [0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];
    const make = (name: string, labelNames: string[]) => {
      const registry = new Registry();
      const h = new Histogram({ name, help: 'h', labelNames, buckets, registers: [registry], collect() { obs.flush(); } });
      const obs = pendingObservations<Record<string, string>>(h);
      return { registry, h, obs };
    };
    const labels = labelCache((agent, action) => ({ agent, action, outcome: 'completed' }));
    const direct = { labelled: make('d_l', ['agent', 'action', 'outcome']), plain: make('d_p', []) };
    const pending = { labelled: make('d_l', ['agent', 'action', 'outcome']), plain: make('d_p', []) };
    // Bucket edges, 0, past the last bucket, and values whose float sums depend on the order they are added in.
    const edges = [0, ...buckets, 301, 1e6, 0.1, 0.2, 0.3, 1 / 3, 2 / 3];
    let seed = 7;
    const next = () => (seed = (seed * 16807) % 2147483647) / 2147483647;
    const read = async (r: Registry) => [await r.metrics(), JSON.stringify(await r.getMetricsAsJSON())];
    for (let round = 0; round < 4; round++) {
      // Round 2 crosses PENDING_VALUES_MAX within one series, between two reads.
      const n = round === 2 ? PENDING_VALUES_MAX * 2 + 5 : 300;
      for (let i = 0; i < n; i++) {
        const v = i < edges.length ? edges[i] : next() < 0.1 ? next() * 400 : next() * 2;
        const which = next() < 0.5 ? labels('A', 'a') : labels('B', 'b');
        direct.labelled.h.observe({ ...which }, v);
        pending.labelled.obs.observe(which, v);
        direct.plain.h.observe(v);
        pending.plain.obs.observe(NO_LABELS, v);
      }
      for (const k of ['labelled', 'plain'] as const) expect(await read(pending[k].registry)).toEqual(await read(direct[k].registry));
    }
  });

  it('a histogram refuses what prom-client refuses, when it is observed', () => {
    const h = new Histogram({ name: 'r', help: 'r', registers: [] });
    const obs = pendingObservations(h);
    expect(() => obs.observe(NO_LABELS, NaN)).toThrow(new TypeError('Value is not a valid number: NaN'));
    expect(() => h.observe({}, NaN)).toThrow(new TypeError('Value is not a valid number: NaN'));
    expect(() => obs.observe(NO_LABELS, Infinity)).toThrow(TypeError);
  });
});
