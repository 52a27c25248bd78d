import { Queue, type JobsOptions } from 'bullmq';
import type { RedisClient } from '../infra/redis/connection.js';
import type { AgentJobData, AgentResult } from '../core/types.js';
import type { Config } from '../core/config.js';
import { BACKOFF_TYPE } from '../core/backoff.js';
import { QUEUE } from '../core/queue-names.js';

export interface RetentionOptions {
  attempts: number;
  keepCompletedCount: number;
  keepCompletedAgeS: number;
  keepFailedCount: number;
  keepFailedAgeS: number;
  /** How long an idempotency key's record is kept (IDEMPOTENCY_TTL_S; default a day): see job-producer.ts. */
  idempotencyTtlS?: number;
}

/**
 * The job options every producer gives its jobs, from the deployment's variables: the API's runtime and the direct
 * producer read them here, so a job retries and is kept the same however it was enqueued.
 */
export function retentionOf(cfg: Pick<Config, 'JOB_ATTEMPTS' | 'KEEP_COMPLETED_COUNT' | 'KEEP_COMPLETED_AGE_S' | 'KEEP_FAILED_COUNT' | 'KEEP_FAILED_AGE_S' | 'IDEMPOTENCY_TTL_S'>): RetentionOptions {
  return {
    attempts: cfg.JOB_ATTEMPTS,
    keepCompletedCount: cfg.KEEP_COMPLETED_COUNT,
    keepCompletedAgeS: cfg.KEEP_COMPLETED_AGE_S,
    keepFailedCount: cfg.KEEP_FAILED_COUNT,
    keepFailedAgeS: cfg.KEEP_FAILED_AGE_S,
    idempotencyTtlS: cfg.IDEMPOTENCY_TTL_S,
  };
}

export type AgentQueue = Queue<AgentJobData, AgentResult>;

export function agentJobOptions(r: RetentionOptions): JobsOptions {
  return {
    attempts: r.attempts,
    backoff: { type: BACKOFF_TYPE },
    // Failed jobs are the dead-letter queue: kept, but bounded so Redis memory cannot grow without limit.
    removeOnComplete: { count: r.keepCompletedCount, age: r.keepCompletedAgeS },
    removeOnFail: { count: r.keepFailedCount, age: r.keepFailedAgeS },
  };
}

export function createAgentQueue(opts: { connection: RedisClient; prefix: string; retention: RetentionOptions }): AgentQueue {
  return new Queue<AgentJobData, AgentResult>(QUEUE.agent, {
    connection: opts.connection,
    prefix: opts.prefix,
    defaultJobOptions: agentJobOptions(opts.retention),
  });
}
