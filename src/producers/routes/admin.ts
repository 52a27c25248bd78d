import type { Queue } from 'bullmq';
import type { FastifyInstance } from 'fastify';
import { Registry } from 'prom-client';
import type { AdminAuth } from '../admin-auth.js';
import { registerBullBoard } from '../bull-board.js';

/**
 * Operator surfaces, each behind the admin guard: Bull Board at /admin/queues and Prometheus text at
 * /metrics (process metrics summed over every process through Redis, plus gauges read at scrape).
 */
export async function adminRoutes(
  app: FastifyInstance,
  deps: { auth: AdminAuth; readOnly: boolean; queues: Queue[]; metrics: { collect(): Promise<Registry>; scrape: Registry } },
) {
  app.addHook('onRequest', deps.auth.guard({ readOnly: deps.readOnly }));
  await registerBullBoard(app, { queues: deps.queues, readOnly: deps.readOnly });

  app.get('/metrics', async (_req, reply) => {
    const merged = Registry.merge([await deps.metrics.collect(), deps.metrics.scrape]);
    return reply.header('content-type', merged.contentType).send(await merged.metrics());
  });
}
