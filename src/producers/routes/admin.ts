import type { Queue } from 'bullmq';
import { Registry } from 'prom-client';
import type { Handler } from '../route-spec.js';

export interface AdminRouteDeps {
  readOnly: boolean;
  queues: Queue[];
  metrics: { collect(): Promise<Registry>; scrape: Registry };
}

/** Prometheus text: process metrics summed over every process through Redis, plus gauges read at scrape. */
export const prometheusMetrics =
  (deps: AdminRouteDeps): Handler<object> =>
  async (_req, reply) => {
    const merged = Registry.merge([await deps.metrics.collect(), deps.metrics.scrape]);
    return reply.header('content-type', merged.contentType).send(await merged.metrics());
  };
