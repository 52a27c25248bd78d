import { principalOf } from '../auth.js';
import { withEnqueueDeadline } from '../http-errors.js';
import type { JobProducer } from '../../shared/queue/job-producer.js';
import type { JobService } from '../job-service.js';
import type { Handler } from '../route-spec.js';
import type { idParam, waitQuery } from '../schemas/common.js';
import type { bulkBody, jobRequestSchema } from '../schemas/jobs.js';

export interface JobRouteDeps {
  producer: JobProducer;
  jobs: JobService;
  /** Enqueue answers 503 after this long instead of hanging while Redis is down. */
  enqueueDeadlineMs?: number;
  longPollMaxMs: number;
}

const deadlineOf = (deps: JobRouteDeps) => deps.enqueueDeadlineMs ?? 5000;

export const enqueueJob =
  (deps: JobRouteDeps): Handler<{ body: typeof jobRequestSchema }> =>
  async (req, reply) => {
    const { orgId } = principalOf(req);
    const meta = { orgId, requestId: req.id };
    const prepared = deps.producer.prepareChecked(req.body, meta);
    const [job] = await withEnqueueDeadline(deps.producer.add([prepared], meta), deadlineOf(deps), [prepared.opts.jobId]);
    req.log.info({ jobId: job.id }, 'job enqueued');
    return reply.code(202).send(job);
  };

export const enqueueBulk =
  (deps: JobRouteDeps): Handler<{ body: typeof bulkBody }> =>
  async (req, reply) => {
    const { orgId } = principalOf(req);
    const meta = { orgId, requestId: req.id };
    const prepared = deps.producer.prepareBulkChecked(req.body.jobs, meta);
    const jobs = await withEnqueueDeadline(deps.producer.add(prepared, meta), deadlineOf(deps) * 5, prepared.map((p) => p.opts.jobId));
    return reply.code(202).send({ jobs });
  };

export const getJob =
  (deps: JobRouteDeps): Handler<{ params: typeof idParam; querystring: typeof waitQuery }> =>
  async (req) => {
    const { orgId } = principalOf(req);
    const { waitMs } = req.query;
    if (waitMs) return deps.jobs.wait(orgId, req.params.id, Math.min(waitMs, deps.longPollMaxMs));
    return deps.jobs.get(orgId, req.params.id);
  };

export const cancelJob =
  (deps: JobRouteDeps): Handler<{ params: typeof idParam }> =>
  async (req, reply) => {
    const { orgId } = principalOf(req);
    const view = await deps.jobs.cancel(orgId, req.params.id);
    return reply.code(view.state === 'cancelling' ? 202 : 200).send(view);
  };
