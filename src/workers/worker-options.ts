import type { WorkerOptions } from 'bullmq';
import type { RedisClient } from '../shared/infra/redis/connection.js';

/**
 * BullMQ's `drainDelay` (seconds) for workers whose queue is mostly empty (flows, maintenance): how long a
 * drained worker blocks on the queue's marker before its next (empty) fetch. A new job ends the block at once
 * (its marker), and a delayed job caps it at the job's due time (BullMQ, at most 10 s), so this only sets how
 * often an idle process polls: every 30 s instead of BullMQ's 5 s. The agent worker keeps the default.
 */
export const IDLE_DRAIN_DELAY_S = 30;

export interface WorkerTiming {
  connection: RedisClient;
  prefix: string;
  concurrency: number;
  lockDurationMs: number;
  stalledIntervalMs: number;
}

/**
 * What every agentq BullMQ worker shares: a job whose process died is picked up again by the stalled-job
 * check (twice at most), which is safe because agent attempts and pipeline steps are idempotent.
 */
export function workerOptions(t: WorkerTiming): WorkerOptions {
  return {
    connection: t.connection,
    prefix: t.prefix,
    concurrency: t.concurrency,
    lockDuration: t.lockDurationMs,
    // BullMQ's default (half the duration) leaves a live job only half a duration of event-loop stall
    // before it looks dead; a quarter keeps the lock short (fast crash recovery) yet hard to lose. The
    // renewal is one call per worker for all its active jobs, so an idle worker pays nothing for it.
    lockRenewTime: Math.max(250, Math.floor(t.lockDurationMs / 4)),
    stalledInterval: t.stalledIntervalMs,
    maxStalledCount: 2,
  };
}
