import { Job } from 'bullmq';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { NotFoundError, ValidationError } from '../../shared/core/errors.js';
import type { AgentQueue } from '../../shared/queue/agent-queue.js';
import { progressFrame } from '../sse.js';
import { STREAM_ID } from '../../shared/core/stream-event.js';
import type { StreamLease, StreamSlots } from '../../shared/stream/stream-slots.js';
import type { AgentJobData, AgentResult } from '../../shared/core/types.js';
import { principalOf } from '../auth.js';
import { HttpError, withDeadline } from '../http-errors.js';
import type { JobProducer } from '../../shared/queue/job-producer.js';
import { toJobView } from '../job-service.js';
import { zodDetails } from '../../shared/core/zod-details.js';
import { serveJobStream, type SessionDeps, type StreamTarget } from './stream-session.js';

export interface StreamRouteDeps extends SessionDeps {
  queue: AgentQueue;
  producer: JobProducer;
  slots: StreamSlots;
  maxStreamsPerOrg: number;
  /** The same per-org admission as `POST /v1/jobs` (rate plan, quotas). */
  enqueueDeadlineMs?: number;
}

const idParam = z.object({ id: z.string().min(1).max(200) });
const streamQuery = z.object({ lastEventId: z.string().regex(STREAM_ID, 'a Redis Stream id such as 1700000000000-0').optional() }).strict();

function lastEventIdOf(req: FastifyRequest): string | undefined {
  const query = streamQuery.safeParse(req.query);
  if (!query.success) throw new ValidationError('invalid query', zodDetails(query.error, 'query.'));
  const header = req.headers['last-event-id'];
  if (header === undefined || header === '') return query.data.lastEventId;
  if (typeof header !== 'string' || !STREAM_ID.test(header)) {
    throw new ValidationError('invalid Last-Event-ID', [{ path: 'headers.last-event-id', message: 'a Redis Stream id such as 1700000000000-0' }]);
  }
  return header;
}

const isPlainObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * `GET /v1/jobs/:id/stream`: a job's events as Server-Sent Events (format in src/shared/stream/sse.ts).
 * `POST /v1/stream`: enqueues a streaming job (validated like `POST /v1/jobs`) and streams it in the same
 * response, for chat-like clients. Both count against the org's cap on open streams.
 */
export function streamRoutes(app: FastifyInstance, deps: StreamRouteDeps) {
  const deadline = deps.enqueueDeadlineMs ?? 1000;
  const open = new Set<{ close(): void }>();
  // Open streams would hold `app.close()` until their jobs end; they are cut instead and clients resume.
  app.addHook('preClose', async () => {
    for (const session of [...open]) session.close();
  });

  function serve(req: FastifyRequest, reply: FastifyReply, o: Parameters<typeof serveJobStream>[3]): void {
    const entry = { close: () => {}, ended: false };
    entry.close = serveJobStream(deps, req, reply, {
      ...o,
      onEnd: () => {
        entry.ended = true;
        open.delete(entry);
      },
    }).close;
    if (!entry.ended) open.add(entry);
  }

  /** The job of `orgId` with its stream flag; another org's job is a 404 exactly like a missing one. */
  async function targetOf(orgId: string, id: string): Promise<StreamTarget> {
    const job = await Job.fromId<AgentJobData, AgentResult>(deps.queue, id);
    if (job && job.data?.orgId === orgId) return { orgId, id, stream: job.data.stream === true, view: toJobView(job, await job.getState()) };
    // Removed before it ran: the job service still knows it through its cancelled tombstone.
    return { orgId, id, stream: false, view: await deps.jobs.get(orgId, id) };
  }

  async function lease(orgId: string): Promise<StreamLease> {
    const verdict = await withDeadline(deps.slots.acquire(orgId), deadline, 'stream limiter');
    if (verdict.lease) return verdict.lease;
    const retryAfter = Math.max(1, Math.ceil(verdict.msBeforeNext / 1000));
    throw new HttpError(429, 'too many open streams for this org', { limit: deps.maxStreamsPerOrg, retryAfter }, { 'retry-after': String(retryAfter) });
  }

  app.get('/v1/jobs/:id/stream', async (req, reply) => {
    const { orgId } = principalOf(req);
    const params = idParam.safeParse(req.params);
    if (!params.success) throw new ValidationError('invalid path', zodDetails(params.error));
    const lastEventId = lastEventIdOf(req);
    const target = await targetOf(orgId, params.data.id);
    serve(req, reply, { target, lease: await lease(orgId), lastEventId });
  });

  app.post('/v1/stream', async (req, reply) => {
    const { orgId } = principalOf(req);
    const body = req.body;
    // Always a streaming job; a malformed `options` is left for validation to name.
    const raw = isPlainObject(body) && (body.options === undefined || isPlainObject(body.options)) ? { ...body, options: { ...(body.options ?? {}), stream: true } } : body;
    const meta = { orgId, requestId: req.id };
    const prepared = deps.producer.prepare(raw, meta);
    const held = await lease(orgId);
    let target: StreamTarget;
    try {
      const job = await withDeadline(deps.producer.enqueue(raw, meta), deadline);
      req.log.info({ jobId: job.id }, 'streaming job enqueued');
      // An idempotency key can name a job that already ran (or did not stream): serve it as found.
      target = prepared.idempotent ? await targetOf(orgId, job.id) : { orgId, id: job.id, stream: true };
    } catch (err) {
      await held.release().catch(() => undefined);
      if (err instanceof NotFoundError) throw new HttpError(409, 'job was removed while being enqueued');
      throw err;
    }
    reply.header('x-job-id', target.id);
    serve(req, reply, { target, lease: held, preface: progressFrame({ stage: 'queued', jobId: target.id }) });
  });
}
