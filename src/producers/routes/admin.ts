import type { Queue } from 'bullmq';
import { Registry } from 'prom-client';
import type { Handler } from '../route-spec.js';
import type { BoardShard } from '../bull-board.js';

export interface AdminRouteDeps {
  readOnly: boolean;
  queues: Queue[];
  /** Each queue shard's agent queue and flows queue, and agentq's side of the board's actions on them. */
  shards?: BoardShard[];
  metrics: { collect(): Promise<Registry>; scrape: Registry };
}

/** Prometheus text: process metrics summed over every process through Redis, plus gauges read at scrape. */
export const prometheusMetrics =
  (deps: AdminRouteDeps): Handler<object> =>
  async (_req, reply) => {
    const merged = Registry.merge([await deps.metrics.collect(), deps.metrics.scrape]);
    return reply.header('content-type', merged.contentType).send(await merged.metrics());
  };
