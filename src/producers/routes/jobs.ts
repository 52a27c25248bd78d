import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { principalOf } from '../auth.js';
import { withDeadline } from '../http-errors.js';
import type { JobProducer } from '../../shared/queue/job-producer.js';
import type { JobService } from '../job-service.js';
import { parseRequest } from '../../shared/core/zod-details.js';

export interface JobRouteDeps {
  producer: JobProducer;
  jobs: JobService;
  /** Enqueue answers 503 after this long instead of hanging while Redis is down. */
  enqueueDeadlineMs?: number;
  longPollMaxMs: number;
}

const idParam = z.object({ id: z.string().min(1).max(200) });
const getQuery = z.object({ waitMs: z.coerce.number().int().min(0).optional() }).strict();

export function jobRoutes(app: FastifyInstance, deps: JobRouteDeps) {
  const deadline = deps.enqueueDeadlineMs ?? 1000;

  app.post('/v1/jobs', async (req, reply) => {
    const { orgId } = principalOf(req);
    const job = await withDeadline(deps.producer.enqueue(req.body, { orgId, requestId: req.id }), deadline);
    req.log.info({ jobId: job.id }, 'job enqueued');
    return reply.code(202).send(job);
  });

  app.post('/v1/jobs/bulk', async (req, reply) => {
    const { orgId } = principalOf(req);
    const jobs = await withDeadline(deps.producer.enqueueBulk(req.body, { orgId, requestId: req.id }), deadline * 5);
    return reply.code(202).send({ jobs });
  });

  app.get('/v1/jobs/:id', async (req) => {
    const { orgId } = principalOf(req);
    const { id } = parseRequest(idParam, req.params, 'path');
    const { waitMs } = parseRequest(getQuery, req.query, 'query');
    if (waitMs) return deps.jobs.wait(orgId, id, Math.min(waitMs, deps.longPollMaxMs));
    return deps.jobs.get(orgId, id);
  });

  app.delete('/v1/jobs/:id', async (req, reply) => {
    const { orgId } = principalOf(req);
    const { id } = parseRequest(idParam, req.params, 'path');
    const view = await deps.jobs.cancel(orgId, id);
    return reply.code(view.state === 'cancelling' ? 202 : 200).send(view);
  });
}
