import { describe, expect, it, vi } from 'vitest';
import { createOpsMetrics } from '../src/shared/ops/metrics.js';

describe('process metrics', () => {
  it("sample the event-loop lag every 100 ms, not prom-client's default 10 ms (an idle process's largest cost)", async () => {
    const metrics = createOpsMetrics(undefined, { processId: 'p-defaults' });
    // Node's delay monitor records each interval between its timer's firings, so its smallest sample is the
    // sampling period (a timer never fires early): ~0.1 s here, ~0.01 s at prom-client's default. A read
    // resets the histogram (the next firing only restarts the interval), so reads are more than two periods
    // apart; with no sample yet it reports max 0.
    const lag = async () => {
      const all = await metrics.registry.getMetricsAsJSON();
      const value = (name: string) => all.find((m) => m.name === name)?.values.find((v) => v.labels.process === 'p-defaults')?.value;
      return { min: value('nodejs_eventloop_lag_min_seconds'), max: value('nodejs_eventloop_lag_max_seconds') };
    };
    const sampled = await vi.waitFor(
      async () => {
        const l = await lag();
        expect(l.max).toBeGreaterThan(0);
        return l;
      },
      { timeout: 20_000, interval: 250 },
    );
    expect(sampled.min).toBeGreaterThanOrEqual(0.09);
  });
});

describe('usage metrics', () => {
  it('counts the usage rows the run sink dropped because Postgres refused them', async () => {
    const metrics = createOpsMetrics(undefined, { processId: 'p-refused' });
    const refused = async () => (await metrics.registry.getMetricsAsJSON()).find((m) => m.name === 'agentq_usage_rows_refused_total')?.values[0]?.value;
    expect(await refused()).toBe(0);
    metrics.usageRefused(2);
    metrics.usageRefused(1);
    expect(await refused()).toBe(3);
  });
});
