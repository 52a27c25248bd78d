import { DelayedError, Worker, type Job } from 'bullmq';
import type { RedisClient } from '../shared/infra/redis/connection.js';
import { subscribeShardChannel } from '../shared/infra/redis/shard-channel.js';
import type { Logger } from '../shared/core/logger.js';
import { backoffDelay } from '../shared/core/backoff.js';
import { cancelChannel } from '../shared/core/cancel.js';
import { QUEUE } from '../shared/core/queue-names.js';
import type { AgentJobData, AgentResult } from '../shared/core/types.js';
import { Cancellation } from './cancellation.js';
import { workerOptions } from './worker-options.js';

export interface AgentWorkerOptions {
  connection: RedisClient;
  /** A separate connection for the cancel channel (a subscribed connection can do nothing else). */
  subscriber: RedisClient;
  prefix: string;
  processor: (job: Job<AgentJobData, AgentResult>, token?: string, cancel?: Cancellation) => Promise<AgentResult>;
  concurrency: number;
  lockDurationMs: number;
  stalledIntervalMs: number;
  backoff: { baseMs: number; maxMs: number };
  /** Turns a retry's backoff into the delay BullMQ applies (the fair gate parks it and times it itself). */
  retryDelay?: (jobId: string, backoffMs: number) => number;
  logger: Logger;
}

/** A job this worker took: its attempt's cancellation, whether its processor still runs, whether its lock was lost. */
interface Taken {
  cancel: Cancellation;
  running: boolean;
  lockLost: boolean;
}

export function createAgentWorker(opts: AgentWorkerOptions) {
  // Jobs taken and not yet recorded as finished (BullMQ's completed / failed event, emitted once their
  // outcome is in Redis): a shutdown waits for these without BullMQ's graceful close, which cannot be forced
  // once started (its close(true) returns the graceful close already under way).
  const inFlight = new Map<string, Taken>();
  let idle: (() => void) | undefined;
  const settled = (id: string | undefined) => {
    if (id && inFlight.delete(id) && inFlight.size === 0) idle?.();
  };
  // Two parameters: BullMQ then makes no AbortController per job (it does for a processor that takes a third).
  const processor = async (job: Job<AgentJobData, AgentResult>, token?: string): Promise<AgentResult> => {
    const id = job.id!;
    const taken: Taken = { cancel: new Cancellation(), running: true, lockLost: false };
    inFlight.set(id, taken);
    let delayed = false;
    try {
      return await opts.processor(job, token, taken.cancel);
    } catch (err) {
      // A job the processor moved to delayed (a rate limit, a park) is in Redis already, and BullMQ emits
      // neither completed nor failed for it: it is no longer this worker's to wait for.
      delayed = err instanceof DelayedError;
      throw err;
    } finally {
      taken.running = false;
      if ((taken.lockLost || delayed) && inFlight.get(id) === taken) settled(id);
    }
  };
  const worker = new Worker<AgentJobData, AgentResult>(QUEUE.agent, processor, {
    ...workerOptions(opts),
    settings: {
      backoffStrategy: (attemptsMade, _type, err, job) => {
        const ms = backoffDelay(attemptsMade, { ...opts.backoff, retryAfterMs: (err as { retryAfterMs?: number } | undefined)?.retryAfterMs });
        return opts.retryDelay && job?.id ? opts.retryDelay(job.id, ms) : ms;
      },
    },
  });

  worker.on('completed', (job, result) => {
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
  worker.on('completed', (job) => settled(job.id));
  worker.on('failed', (job) => settled(job?.id));
  // A job whose lock BullMQ could not renew has its outcome refused (the stalled check hands it to another
  // worker), and BullMQ then emits neither completed nor failed for it: done once its processor returns.
  worker.on('lockRenewalFailed', (ids) => {
    for (const id of ids) {
      const taken = inFlight.get(id);
      if (taken?.running) taken.lockLost = true;
      else settled(id);
    }
  });
  worker.on('error', (err) => opts.logger.error({ err: err.message }, 'worker error'));
  worker.on('stalled', (jobId) => opts.logger.warn({ jobId }, 'stalled job moved back to wait'));

  const channel = cancelChannel(opts.prefix);
  const onMessage = (ch: string, jobId: string) => {
    const cancel = ch === channel ? inFlight.get(jobId)?.cancel : undefined;
    if (!cancel || cancel.cancelled) return;
    cancel.cancel();
    opts.logger.info({ jobId }, 'cancelling active job');
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
     * Stops taking jobs and lets in-flight ones finish within `graceMs`; past that, closes anyway. Jobs cut off
     * that way keep their lock until it expires and are then recovered by the stalled-job check elsewhere.
     */
    async close(graceMs: number): Promise<void> {
      opts.subscriber.off('smessage', onMessage);
      // No new fetch. A fetch already blocked may still take one job after the jobs here are done; that job is
      // not run here, and the stalled check gives it back to the queue once its lock lapses.
      await worker.pause(true);
      let timer: NodeJS.Timeout | undefined;
      const drained = inFlight.size === 0 ? Promise.resolve('drained' as const) : new Promise<'drained'>((resolve) => (idle = () => resolve('drained')));
      const timeout = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), graceMs)));
      const outcome = await Promise.race([drained, timeout]);
      clearTimeout(timer);
      if (outcome === 'timeout') opts.logger.warn({ graceMs, running: inFlight.size }, 'shutdown grace period over; closing with jobs still running');
      // Forced either way: the jobs are done (or given up on), and a forced close never waits on a blocked
      // fetch (after a cluster failover the graceful one could wait on its connection forever).
      await worker.close(true);
      subscription.close();
    },
  };
}

export type AgentWorker = ReturnType<typeof createAgentWorker>;
