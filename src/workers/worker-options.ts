import type { WorkerOptions } from 'bullmq';
import type { RedisClient } from '../shared/infra/redis/connection.js';

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
