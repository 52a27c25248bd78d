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
    stalledInterval: t.stalledIntervalMs,
    maxStalledCount: 2,
  };
}
