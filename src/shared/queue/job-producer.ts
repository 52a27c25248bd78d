import { createHash, randomUUID } from 'node:crypto';
import type { JobsOptions } from 'bullmq';
import type { Redis } from 'ioredis';
import { ValidationError } from '../core/errors.js';
import type { AgentQueue } from './agent-queue.js';
import { createOrgJobIndexWriter } from './org-job-index.js';
import type { AgentJobData } from '../core/types.js';
import { bulkRequestSchema, jobRequestSchema, type JobRequest } from './job-request.js';
import { zodDetails } from '../core/zod-details.js';

/** What the producer needs from the agent registry: input validation that throws ValidationError. */
export interface InputValidator {
  validateInput(agent: string, action: string, input: unknown): unknown;
}

export interface EnqueueMeta {
  orgId: string;
  requestId?: string;
  userId?: string;
}

export interface EnqueuedJob {
  id: string;
  state: string;
}

/**
 * Validates and enqueues agent jobs. Used by the HTTP API and, as the "direct producer", by services that
 * share Redis: both paths run the same validation, so nothing reaches a worker that the API would refuse.
 */
export function createJobProducer(deps: { queue: AgentQueue; agents: InputValidator }) {
  const { queue, agents } = deps;
  // Per-org index for `GET /v1/jobs`, written alongside each add on the queue's own (ioredis) connection. A
  // failed index write only hides the job from listings, so it never fails the enqueue itself.
  const index = createOrgJobIndexWriter({ client: () => queue.getBackend().client as unknown as Promise<Redis>, prefix: queue.opts.prefix ?? 'bull' });
  const indexed = (orgId: string, ps: Array<ReturnType<typeof prepare>>) =>
    index.add(orgId, ps.map((p) => ({ id: p.opts.jobId!, at: p.data.enqueuedAt }))).catch(() => undefined);

  function prepare(raw: unknown, meta: EnqueueMeta, pathPrefix = '') {
    const parsed = jobRequestSchema.safeParse(raw);
    if (!parsed.success) throw new ValidationError('invalid job request', zodDetails(parsed.error, pathPrefix));
    const req: JobRequest = parsed.data;
    let input: unknown;
    try {
      input = agents.validateInput(req.agent, req.action, req.input);
    } catch (err) {
      if (err instanceof ValidationError && pathPrefix) {
        throw new ValidationError(err.message, err.details.map((d) => ({ ...d, path: `${pathPrefix}${d.path}` })));
      }
      throw err;
    }
    const opts = req.options ?? {};
    const data: AgentJobData = {
      orgId: meta.orgId,
      agent: req.agent,
      action: req.action,
      input,
      ...(opts.model ? { model: opts.model } : {}),
      ...(opts.stream ? { stream: true } : {}),
      ...(meta.requestId ? { requestId: meta.requestId } : {}),
      ...(meta.userId ? { userId: meta.userId } : {}),
      enqueuedAt: Date.now(),
    };
    const jobOpts: JobsOptions = {
      // Idempotent jobs get an id derived from (org, key): BullMQ's add is a no-op for an existing id, atomically,
      // so racing duplicates all see the one job. Org is in the hash, so keys never collide across tenants.
      jobId: opts.idempotencyKey ? idempotentJobId(meta.orgId, opts.idempotencyKey) : randomUUID(),
      ...(opts.priority ? { priority: opts.priority } : {}),
      ...(opts.delayMs ? { delay: opts.delayMs } : {}),
      // The job's createdAt is its enqueue time, the same instant the org index (and `since`) sorts by.
      timestamp: data.enqueuedAt,
    };
    return { name: `${req.agent}:${req.action}`, data, opts: jobOpts, idempotent: Boolean(opts.idempotencyKey) };
  }

  async function stateOf(job: { id?: string; opts: JobsOptions; getState(): Promise<string> }, idempotent: boolean): Promise<string> {
    if (idempotent) return job.getState();
    return job.opts.delay ? 'delayed' : job.opts.priority ? 'prioritized' : 'waiting';
  }

  return {
    /** Validates one job request into what `queue.add` (or a flow child) takes; throws ValidationError. */
    prepare,

    async enqueue(raw: unknown, meta: EnqueueMeta): Promise<EnqueuedJob> {
      const p = prepare(raw, meta);
      const [job] = await Promise.all([queue.add(p.name, p.data, p.opts), indexed(meta.orgId, [p])]);
      return { id: job.id!, state: await stateOf(job, p.idempotent) };
    },

    /** All-or-nothing validation, then one `addBulk` (a single MULTI round trip). */
    async enqueueBulk(raw: unknown, meta: EnqueueMeta): Promise<EnqueuedJob[]> {
      const shape = bulkRequestSchema.safeParse(raw);
      if (!shape.success) throw new ValidationError('invalid bulk request', zodDetails(shape.error));
      const list = shape.data.jobs;
      const prepared = list.map((item, i) => prepare(item, meta, `jobs.${i}.`));
      const [jobs] = await Promise.all([queue.addBulk(prepared), indexed(meta.orgId, prepared)]);
      return Promise.all(jobs.map((job, i) => stateOf(job, prepared[i].idempotent).then((state) => ({ id: job.id!, state }))));
    },
  };
}

export type JobProducer = ReturnType<typeof createJobProducer>;

export function idempotentJobId(orgId: string, key: string): string {
  return `idem-${createHash('sha256').update(orgId).update('\0').update(key).digest('hex').slice(0, 40)}`;
}
