import { describe, expect, it, vi } from 'vitest';

/** What `collectDefaultMetrics` was asked for (the real one still runs). */
const asked = vi.hoisted(() => [] as unknown[]);
vi.mock('prom-client', async (importOriginal) => {
  const real = await importOriginal<typeof import('prom-client')>();
  return {
    ...real,
    collectDefaultMetrics: (o?: Parameters<typeof real.collectDefaultMetrics>[0]) => {
      asked.push(o);
      real.collectDefaultMetrics(o);
    },
  };
});
const { createOpsMetrics } = await import('../src/shared/ops/metrics.js');

describe('process metrics', () => {
  it("sample the event-loop lag every 100 ms, not prom-client's default 10 ms (an idle process's largest cost)", async () => {
    const metrics = createOpsMetrics(undefined, { processId: 'p-defaults' });
    expect(asked).toEqual([expect.objectContaining({ eventLoopMonitoringPrecision: 100, labels: { process: 'p-defaults' } })]);
    // The lag is still reported, per process.
    const text = await metrics.registry.metrics();
    expect(text).toMatch(/nodejs_eventloop_lag_p99_seconds\{process="p-defaults"\}/);
  });
});
