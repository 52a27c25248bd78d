import { Counter, Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { labelCache, pendingIncs } from '../src/shared/ops/metric-cells.js';

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
});
