import type { FastifyReply, FastifyRequest } from 'fastify';
import type { RedisClient } from '../../shared/infra/redis/connection.js';
import { NotFoundError } from '../../shared/core/errors.js';
import { DELAY_REASONS } from '../../shared/core/outcomes.js';
import { jobStreamKey } from '../../shared/core/queue-keys.js';
import { DONE_FRAME, eventFrame, PING_FRAME, progressFrame, SSE_HEADERS } from '../sse.js';
import { compareStreamIds, decodeEvent, isTerminal, ofIncarnation, SSE_HEARTBEAT_HEADER, type StreamEvent } from '../../shared/core/stream-event.js';
import type { RawEntry, StreamReader, StreamSubscription } from '../../shared/stream/stream-reader.js';
import type { StreamLease } from '../../shared/stream/stream-slots.js';
import { isFinished, type JobService, type JobView } from '../job-service.js';

// A limit holds the job: the dispatcher's (its org's slots, a blocked model) or a run-time delay's (outcomes.ts's one
// list), but for a batch-tier job's wait for its batch, which is its tier's way of running, not a limit.
const LIMIT_REASONS = new Set<string>(['org_concurrency', 'model_blocked', ...DELAY_REASONS.filter((r) => r !== 'waiting_for_batch')]);

export interface SessionDeps {
  redis: RedisClient;
  /** The queue prefix of the shard holding an org's jobs (their streams live beside them). */
  prefixOf(orgId: string): string;
  jobs: JobService;
  /** The shared reader of an org's queue shard: one XREAD reads streams of one cluster slot only. */
  reader: (orgId: string) => StreamReader;
  heartbeatMs: number;
  /** The open-streams gauge of this process's metrics. */
  openStreams?: { inc(): void; dec(): void };
}

/** The job a session serves, as found when the client connected. */
export interface StreamTarget {
  orgId: string;
  id: string;
  /** Enqueued with `stream: true`: its events are in a Redis Stream. */
  stream: boolean;
  /**
   * The job's `timestamp`: only its stream entries of this incarnation are served (a job id reused through an
   * idempotency key may find the old job's entries in the stream). Undefined: every entry (a random id).
   */
  incarnation?: number;
  /** Its view at connect time, when it was read (POST /v1/stream knows a fresh job is not finished). */
  view?: JobView;
}

/** The final message of a job, from its view (for jobs that did not stream, or whose stream expired). */
export function finalFromView(view: JobView): StreamEvent {
  if (view.state === 'completed' && view.result) return { kind: 'result', result: view.result };
  return { kind: 'error', error: view.error ?? view.state, state: view.state === 'cancelled' ? 'cancelled' : 'failed' };
}

/**
 * One SSE response: replays a streaming job's Redis Stream from the start (or from `Last-Event-ID`) and
 * follows it through the process's shared reader; a job that did not stream gets its final answer by long
 * poll. Heartbeats keep proxies from closing the connection, refresh the org's stream lease and notice a
 * job that ended without a final entry. Whatever ends the response (last message, client gone, error)
 * releases the timer, the subscription and the lease.
 */
export function serveJobStream(
  deps: SessionDeps,
  req: FastifyRequest,
  reply: FastifyReply,
  o: { target: StreamTarget; lease: StreamLease; lastEventId?: string; preface?: string; onEnd?: () => void },
): { close(): void } {
  const { target, lease } = o;
  const res = reply.raw;
  const log = req.log.child({ jobId: target.id });
  let closed = false;
  let sub: StreamSubscription | undefined;
  /** Entries arrived since the last heartbeat (then the job is evidently alive). */
  let lively = false;
  /** A heartbeat found the job finished but no final entry yet: the next one answers from the job itself. */
  let endSeen = false;

  deps.openStreams?.inc();

  function cleanup(): void {
    if (closed) return;
    closed = true;
    deps.openStreams?.dec();
    clearInterval(heartbeat);
    sub?.close();
    res.off('drain', onDrain);
    lease.release().catch((err: unknown) => log.warn({ err }, 'could not release stream lease'));
    if (!res.writableEnded) res.end();
    o.onEnd?.();
  }

  function onDrain(): void {
    sub?.resume();
  }

  function write(frame: string): void {
    if (closed || res.destroyed || res.writableEnded) return;
    // A slow client stops its own reads until its socket drains; the others are not held back.
    if (!res.write(frame)) sub?.pause();
  }

  function finish(last?: StreamEvent, id?: string): void {
    if (closed) return;
    if (last) write(eventFrame(last, id));
    write(DONE_FRAME);
    cleanup();
  }

  function fail(err: unknown): void {
    if (closed) return;
    if (err instanceof NotFoundError) return finish({ kind: 'error', error: 'job not found', state: 'failed' });
    log.error({ err }, 'job stream failed');
    finish({ kind: 'error', error: 'internal error', state: 'failed' });
  }

  /**
   * Why the job has not started yet, when a limit holds it (org concurrency, a rate limit, a blocked model,
   * an open breaker, a quota), sent when it changes; not stored in the job's stream. Plain queueing for a
   * fair share and the job's own delay are not news: `queued` / `delayed` already say so.
   */
  let heardFromWorker = false;
  let lastWaiting = '';
  async function reportWaiting(): Promise<void> {
    if (heardFromWorker || closed) return;
    const view = await deps.jobs.get(target.orgId, target.id);
    if (closed || heardFromWorker || !view.waitingFor || !LIMIT_REASONS.has(view.waitingFor.reason)) return;
    const progress = { stage: 'waiting' as const, jobId: target.id, ...view.waitingFor };
    const key = JSON.stringify(progress);
    if (key === lastWaiting) return;
    lastWaiting = key;
    write(progressFrame(progress));
  }

  function onEntries(entries: RawEntry[]): void {
    lively = true;
    heardFromWorker = true;
    for (const [id, fields] of entries) {
      if (!ofIncarnation(fields, target.incarnation)) continue;
      const event = decodeEvent(fields);
      if (!event) continue;
      if (isTerminal(event)) return finish(event, id);
      write(eventFrame(event, id));
    }
  }

  async function checkEnded(): Promise<void> {
    const view = await deps.jobs.get(target.orgId, target.id);
    if (closed || !isFinished(view.state)) return;
    // The worker writes the final entry just after the job is marked finished; give it one beat.
    if (endSeen) finish(finalFromView(view));
    endSeen = true;
  }

  async function followStream(): Promise<void> {
    const key = jobStreamKey(deps.prefixOf(target.orgId), target.id);
    const finished = target.view ? isFinished(target.view.state) : false;
    if (o.lastEventId || finished) {
      const [newest] = (await deps.redis.xrevrange(key, '+', '-', 'COUNT', 1)) as RawEntry[];
      if (closed) return;
      // Another incarnation's entry tells nothing about this job (its own, if any, are read below).
      const last = newest && ofIncarnation(newest[1], target.incarnation) ? newest : undefined;
      if (!last && finished) return finish(finalFromView(target.view!));
      const event = last && decodeEvent(last[1]);
      // Resuming after the final message: nothing is left but the end marker.
      if (event && isTerminal(event) && o.lastEventId && compareStreamIds(last[0], o.lastEventId) <= 0) return finish();
    }
    sub = deps.reader(target.orgId).subscribe(key, o.lastEventId ?? '0-0', onEntries, fail);
    res.on('drain', onDrain);
  }

  async function pollFinal(): Promise<void> {
    if (target.view && isFinished(target.view.state)) return finish(finalFromView(target.view));
    while (!closed) {
      const view = await deps.jobs.wait(target.orgId, target.id, deps.heartbeatMs);
      if (isFinished(view.state)) return finish(finalFromView(view));
    }
  }

  reply.hijack();
  const heartbeat = setInterval(() => {
    write(PING_FRAME);
    lease.refresh().catch((err: unknown) => log.warn({ err }, 'could not refresh stream lease'));
    if (target.stream && !lively) checkEnded().catch(fail);
    if (!lively) reportWaiting().catch((err: unknown) => log.debug({ err }, 'could not read why the job waits'));
    lively = false;
  }, deps.heartbeatMs);
  res.on('close', cleanup);
  // A write racing the client's disconnect errors the response; 'close' follows and cleans up.
  res.on('error', (err) => log.debug({ err: err.message }, 'stream response error'));
  // The client may have gone while the handler awaited: then 'close' has already fired.
  if (res.destroyed || !res.socket || res.socket.destroyed) {
    cleanup();
    return { close: cleanup };
  }
  // The heartbeat is announced so that a client sizes its idle timeout to it, whatever this deployment's is.
  res.writeHead(200, { ...(reply.getHeaders() as Record<string, string>), ...SSE_HEADERS, [SSE_HEARTBEAT_HEADER]: String(deps.heartbeatMs) });
  res.flushHeaders();
  if (o.preface) write(o.preface);

  (target.stream ? followStream() : pollFinal()).catch(fail);
  reportWaiting().catch((err: unknown) => log.debug({ err }, 'could not read why the job waits'));
  // Ends the response without [DONE] (server shutting down): the client reconnects, with Last-Event-ID, elsewhere.
  return { close: cleanup };
}
