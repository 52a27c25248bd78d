import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { principalOf } from '../app.js';
import { HttpError, withDeadline } from '../http-errors.js';
import type { JobProducer } from '../job-producer.js';
import type { JobService } from '../job-service.js';
import { parseRequest } from '../zod-details.js';

export interface AdmissionCheck {
  /** Per-org request admission (token bucket) and durable quotas; a refusal becomes a 429. */
  admit(orgId: string, jobs: number): Promise<{ allowed: true } | { allowed: false; reason: string; retryAfterS: number }>;
}

export interface JobRouteDeps {
  producer: JobProducer;
  jobs: JobService;
  admission?: AdmissionCheck;
  /** Enqueue answers 503 after this long instead of hanging while Redis is down. */
  enqueueDeadlineMs?: number;
  longPollMaxMs: number;
}

const idParam = z.object({ id: z.string().min(1).max(200) });
const getQuery = z.object({ waitMs: z.coerce.number().int().min(0).optional() }).strict();

/** Spends the org's admission for `jobs` jobs; a refusal is a 429 with Retry-After. */
export async function admitOrThrow(admission: AdmissionCheck | undefined, orgId: string, jobs: number, deadlineMs = 1000): Promise<void> {
  if (!admission) return;
  const verdict = await withDeadline(admission.admit(orgId, jobs), deadlineMs, 'rate limiter');
  if (!verdict.allowed) {
    throw new HttpError(429, verdict.reason, { retryAfter: verdict.retryAfterS }, { 'retry-after': String(verdict.retryAfterS) });
  }
}

export function jobRoutes(app: FastifyInstance, deps: JobRouteDeps) {
  const deadline = deps.enqueueDeadlineMs ?? 1000;

  const admit = (orgId: string, count: number) => admitOrThrow(deps.admission, orgId, count, deadline);

  app.post('/v1/jobs', async (req, reply) => {
    const { orgId } = principalOf(req);
    await admit(orgId, 1);
    const job = await withDeadline(deps.producer.enqueue(req.body, { orgId, requestId: req.id }), deadline);
    req.log.info({ jobId: job.id }, 'job enqueued');
    return reply.code(202).send(job);
  });

  app.post('/v1/jobs/bulk', async (req, reply) => {
    const { orgId } = principalOf(req);
    const count = Array.isArray((req.body as { jobs?: unknown })?.jobs) ? (req.body as { jobs: unknown[] }).jobs.length : 1;
    await admit(orgId, Math.max(1, count));
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
