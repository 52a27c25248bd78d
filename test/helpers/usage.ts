import { Redis } from 'ioredis';
import { usageStreamKey } from '../../src/shared/core/queue-keys.js';
import { until } from './wait.js';

/**
 * Usage rows are written behind (Redis Stream -> the workers' run sinks -> agent_runs) and the sink deletes
 * each entry once its row is committed: an empty stream means every row appended so far is in Postgres. A
 * test that saw a job finish (its row was appended before that) waits on this before reading agent_runs.
 */
export async function usageWritten(s: { cfg: { REDIS_URL: string; QUEUE_PREFIX: string } }, timeoutMs?: number): Promise<void> {
  const redis = new Redis(s.cfg.REDIS_URL, { maxRetriesPerRequest: null });
  try {
    await until('usage rows written to agent_runs', async () => (await redis.xlen(usageStreamKey(s.cfg.QUEUE_PREFIX))) === 0, timeoutMs);
  } finally {
    redis.disconnect();
  }
}
