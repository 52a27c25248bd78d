import { Job } from 'bullmq';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { NotFoundError } from '../../shared/core/errors.js';
import type { AgentQueue } from '../../shared/queue/agent-queue.js';
import { progressFrame } from '../sse.js';
import type { StreamLease, StreamSlots } from '../../shared/stream/stream-slots.js';
import type { AgentJobData, AgentResult } from '../../shared/core/types.js';
import { principalOf } from '../auth.js';
import { HttpError, withDeadline, withEnqueueDeadline } from '../http-errors.js';
import type { JobProducer } from '../../shared/queue/job-producer.js';
import { finishedSinceRead, toJobView } from '../job-service.js';
import type { Handler } from '../route-spec.js';
import type { idParam } from '../schemas/common.js';
import type { jobRequestSchema, streamHeaders, streamQuery } from '../schemas/jobs.js';
import { serveJobStream, type SessionDeps, type StreamTarget } from './stream-session.js';

export interface StreamRouteDeps extends SessionDeps {
  /** The agent queue of the shard holding an org's jobs. */
  queueOf(orgId: string): AgentQueue;
  producer: JobProducer;
  slots: StreamSlots;
  maxStreamsPerOrg: number;
  enqueueDeadlineMs?: number;
}

/** The open SSE responses of one API process, cut when it closes (clients resume elsewhere with Last-Event-ID). */
export interface StreamSessions {
  /**
   * The app is closing (its preClose hook has run): a request still in its async prefix then (auth, the
   * limiter, an enqueue) would open a stream after the others were cut, which nothing would cut.
   */
  closing(): boolean;
  serve(req: FastifyRequest, reply: FastifyReply, o: Parameters<typeof serveJobStream>[3]): void;
}

export function streamSessions(app: FastifyInstance, deps: SessionDeps): StreamSessions {
  const open = new Set<{ close(): void }>();
  let closing = false;
  // Open streams would hold `app.close()` until their jobs end; they are cut instead and clients resume.
  app.addHook('preClose', async () => {
    closing = true;
    for (const session of [...open]) session.close();
  });
  return {
    closing: () => closing,
    serve(req, reply, o) {
      const entry = { close: () => {}, ended: false };
      entry.close = serveJobStream(deps, req, reply, {
        ...o,
        onEnd: () => {
          entry.ended = true;
          open.delete(entry);
        },
      }).close;
      // Started after the cut (POST /v1/stream's enqueue was in flight: its job exists, so it is not refused):
      // cut the same way at once, its `queued` frame and `x-job-id` sent, so the client resumes it elsewhere.
      if (closing) entry.close();
      else if (!entry.ended) open.add(entry);
    },
  };
}

export type StreamHandlerDeps = StreamRouteDeps & { sessions: StreamSessions };

/** The job of `orgId` with its stream flag; another org's job is a 404 exactly like a missing one. */
async function targetOf(deps: StreamHandlerDeps, orgId: string, id: string): Promise<StreamTarget> {
  const job = await Job.fromId<AgentJobData, AgentResult>(deps.queueOf(orgId), id);
  if (job && job.data?.orgId === orgId) {
    const state = await job.getState();
    // A job that finished between the two reads is read again: its final message needs the result.
    const view = finishedSinceRead(job, state) ? await deps.jobs.get(orgId, id) : toJobView(job, state);
    return { orgId, id, stream: job.data.stream === true, incarnation: job.timestamp, view };
  }
  // Removed before it ran: the job service still knows it through its cancelled tombstone.
  return { orgId, id, stream: false, view: await deps.jobs.get(orgId, id) };
}

/**
 * One of the org's stream slots, the last step before a GET's stream starts (and a POST's enqueue): a request
 * that gets it once the app is closing is refused with a 503 and the slot released.
 */
async function lease(deps: StreamHandlerDeps, orgId: string): Promise<StreamLease> {
  // Past the deadline the request answers 503, but the acquire already sent may still be granted: told that
  // nobody waits for it any more, the limiter releases that lease at once (it held a slot until it lapsed).
  const gaveUp = new AbortController();
  let verdict;
  try {
    verdict = await withDeadline(deps.slots.acquire(orgId, gaveUp.signal), deps.enqueueDeadlineMs ?? 5000, 'stream limiter');
  } catch (err) {
    gaveUp.abort(err);
    throw err;
  }
  if (verdict.lease) {
    // Nothing is sent or enqueued yet: refused, so the client goes to another instance at once.
    if (deps.sessions.closing()) {
      await verdict.lease.release().catch(() => undefined);
      throw new HttpError(503, 'server is shutting down: retry on another instance', {}, { 'retry-after': '1' });
    }
    return verdict.lease;
  }
  const retryAfter = Math.max(1, Math.ceil(verdict.msBeforeNext / 1000));
  throw new HttpError(429, 'too many open streams for this org', { limit: deps.maxStreamsPerOrg, retryAfter }, { 'retry-after': String(retryAfter) });
}

/**
 * `GET /v1/jobs/:id/stream`: a job's events as Server-Sent Events (format in src/producers/sse.ts),
 * resumed after `Last-Event-ID` (the header wins over `?lastEventId=`). Counts against the org's stream cap.
 */
export const streamJob =
  (deps: StreamHandlerDeps): Handler<{ params: typeof idParam; querystring: typeof streamQuery; headers: typeof streamHeaders }> =>
  async (req, reply) => {
    const { orgId } = principalOf(req);
    const lastEventId = req.headers['last-event-id'] || req.query.lastEventId;
    const target = await targetOf(deps, orgId, req.params.id);
    deps.sessions.serve(req, reply, { target, lease: await lease(deps, orgId), lastEventId });
  };

/**
 * `POST /v1/stream`: enqueues a streaming job (validated like `POST /v1/jobs`) and streams it in the same
 * response, for chat-like clients.
 */
export const enqueueAndStream =
  (deps: StreamHandlerDeps): Handler<{ body: typeof jobRequestSchema }> =>
  async (req, reply) => {
    const { orgId } = principalOf(req);
    const deadline = deps.enqueueDeadlineMs ?? 5000;
    // Always a streaming job.
    const raw = { ...req.body, options: { ...(req.body.options ?? {}), stream: true } };
    const meta = { orgId, requestId: req.id };
    // The route's schema has checked the body: prepared once, its input checked against the agent here.
    const prepared = deps.producer.prepareChecked(raw, meta);
    const held = await lease(deps, orgId);
    let target: StreamTarget;
    try {
      const [job] = await withEnqueueDeadline(deps.producer.add([prepared], meta), deadline, [prepared.opts.jobId]);
      req.log.info({ jobId: job.id }, 'streaming job enqueued');
      // An idempotency key can name a job that already ran (or did not stream): serve it as found.
      // A fresh job's id is random: no other incarnation shares its stream.
      target = prepared.idempotent ? await targetOf(deps, orgId, job.id) : { orgId, id: job.id, stream: true };
    } catch (err) {
      await held.release().catch(() => undefined);
      if (err instanceof NotFoundError) {
        // An idempotency key whose job ran and was removed (its record still names it): nothing left to stream.
        if (prepared.idempotent) {
          throw new HttpError(409, `idempotencyKey names job ${prepared.opts.jobId}, which is no longer kept: its stream and result are gone`, {
            jobId: prepared.opts.jobId,
            details: [{ path: 'options.idempotencyKey', message: `names job ${prepared.opts.jobId}, no longer kept` }],
          });
        }
        throw new HttpError(409, 'job was removed while being enqueued');
      }
      throw err;
    }
    reply.header('x-job-id', target.id);
    deps.sessions.serve(req, reply, { target, lease: held, preface: progressFrame({ stage: 'queued', jobId: target.id }) });
  };
