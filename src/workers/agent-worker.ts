import { Worker, type Job, type MinimalJob } from 'bullmq';
import { logConnectionErrors, type RedisClient } from '../shared/infra/redis/connection.js';
import { subscribeShardChannel } from '../shared/infra/redis/shard-channel.js';
import type { Logger } from '../shared/core/logger.js';
import { backoffDelay } from '../shared/core/backoff.js';
import { cancelChannel, parseCancelMessage } from '../shared/core/cancel.js';
import { QUEUE } from '../shared/core/queue-names.js';
import type { AgentJobData, AgentResult } from '../shared/core/types.js';
import { createCancellations, type Cancellation } from './cancellation.js';
import { workerOptions } from './worker-options.js';
import { closeAfterGrace, createInFlight } from './in-flight.js';

export interface AgentWorkerOptions {
  connection: RedisClient;
  /** A separate connection for the cancel channel (a subscribed connection can do nothing else). */
  subscriber: RedisClient;
  prefix: string;
  processor: (job: Job<AgentJobData, AgentResult>, token?: string, cancel?: Cancellation) => Promise<AgentResult>;
  /**
   * The process's concurrency pool, this worker's place in it (concurrency-pool.ts `member`): `processor` runs in one
   * of its slots. Entered here rather than through the member's `wrap`: one async frame per job fewer.
   */
  slots?: { enter(): Promise<void> | undefined; exit(): void };
  concurrency: number;
  lockDurationMs: number;
  stalledIntervalMs: number;
  backoff: { baseMs: number; maxMs: number };
  /**
   * Turns a retry's backoff into the delay BullMQ applies (the fair gate parks it and times it itself). `job`: the
   * attempt's Job object, the one BullMQ's 'failed' event hands over after it.
   */
  retryDelay?: (job: MinimalJob, backoffMs: number) => number;
  logger: Logger;
}

export function createAgentWorker(opts: AgentWorkerOptions) {
  // Jobs taken and not yet recorded as finished (in-flight.ts), and the cancellation of each attempt running.
  // Not one per job id: a job fetched again after a stall runs here twice, and a cancel must reach both attempts.
  const inFlight = createInFlight();
  const attempts = createCancellations();
  // Two parameters: BullMQ then makes no AbortController per job (it does for a processor that takes a third).
  // One async function for the trackings and the pool's slot (the in-flight job, the attempt's cancellation and the
  // slot, each in halves): nested runs of them were four async frames and two closures per job.
  const slots = opts.slots;
  const processor = async (job: Job<AgentJobData, AgentResult>, token?: string): Promise<AgentResult> => {
    const taken = inFlight.begin(job);
    const cancel = attempts.start(job.id!, job.timestamp);
    const wait = slots?.enter();
    let failure: { err: unknown } | undefined;
    try {
      if (wait) await wait;
      return await opts.processor(job, token, cancel);
    } catch (err) {
      failure = { err };
      throw err;
    } finally {
      // In the order the nested runs ended in: the slot first, then the attempt's cancellation, then the job in flight.
      slots?.exit();
      attempts.end(job.id!, cancel);
      inFlight.end(job, taken, failure);
    }
  };
  const worker = new Worker<AgentJobData, AgentResult>(QUEUE.agent, processor, {
    ...workerOptions(opts),
    settings: {
      backoffStrategy: (attemptsMade, _type, err, job) => {
        const ms = backoffDelay(attemptsMade, { ...opts.backoff, retryAfterMs: (err as { retryAfterMs?: number } | undefined)?.retryAfterMs });
        return opts.retryDelay && job?.id ? opts.retryDelay(job, ms) : ms;
      },
    },
  });

  worker.on('completed', (job, result) => {
    // The line's fields are gathered only when it is written (a worker logging at warn makes none of it per job).
    if (!opts.logger.isLevelEnabled('info')) return;
    const d = job.data;
    opts.logger.info(
      {
        jobId: job.id,
        orgId: d.orgId,
        agent: d.agent,
        action: d.action,
        ...(d.requestId ? { requestId: d.requestId } : {}),
        ...(d.userId ? { userId: d.userId } : {}),
        attempt: job.attemptsMade,
        model: result?.model,
        durationMs: result?.durationMs,
        costUsd: result?.costUsd,
        cacheHit: result?.cacheHit,
      },
      'job completed',
    );
  });
  inFlight.attach(worker);
  logConnectionErrors(worker, opts.logger, 'agent worker', { msg: 'worker error', level: 'error' });
  worker.on('stalled', (jobId) => opts.logger.warn({ jobId }, 'stalled job moved back to wait'));

  const channel = cancelChannel(opts.prefix);
  // The API sends it whatever state it read for the job: one whose stalled attempt still runs here reads
  // "waiting" (or "active", fetched again) to BullMQ. It names the job's timestamp: an attempt of a job made under
  // the id after the API read the one it cancels runs on. An older API's message (the id alone, a rolling upgrade)
  // cancels every attempt of the id, as it did.
  const onMessage = (ch: string, message: string) => {
    if (ch !== channel) return;
    const { id: jobId, ts } = parseCancelMessage(message);
    const cancelled = attempts.cancel(jobId, ts);
    if (cancelled > 0) opts.logger.info({ jobId, attempts: cancelled }, 'cancelling active job');
  };
  // A sharded channel (SSUBSCRIBE): on a cluster the cancel reaches the data's shard only, not every node.
  opts.subscriber.on('smessage', onMessage);
  const subscription = subscribeShardChannel(opts.subscriber, channel, {
    onError: (err) => opts.logger.warn({ err }, 'could not subscribe to the cancel channel again; retrying'),
  });

  return {
    worker,
    ready: async () => {
      await subscription.subscribed;
      await worker.waitUntilReady();
    },
    /**
     * Stops taking jobs and lets in-flight ones finish within `graceMs`; past that, closes anyway (in-flight.ts
     * `closeAfterGrace`).
     */
    async close(graceMs: number): Promise<void> {
      opts.subscriber.off('smessage', onMessage);
      await closeAfterGrace(worker, inFlight, graceMs, opts.logger);
      subscription.close();
    },
  };
}

export type AgentWorker = ReturnType<typeof createAgentWorker>;
