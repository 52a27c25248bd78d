import type { Config } from '../../src/shared/core/config.js';
import { usageStreamKey } from '../../src/shared/core/queue-keys.js';
import { createRedis, redisTargetOf } from '../../src/shared/infra/redis/connection.js';
import { until } from './wait.js';

/**
 * Usage rows are written behind (Redis Stream -> the workers' run sinks -> agent_runs) and the sink deletes
 * each entry once its row is committed: an empty stream means every row appended so far is in Postgres. A
 * test that saw a job finish (its row was appended before that) waits on this before reading agent_runs.
 */
export async function usageWritten(s: { cfg: Config }, timeoutMs?: number): Promise<void> {
  // The stack's own Redis (a cluster in the cluster tests), where its usage stream lives.
  const redis = createRedis(redisTargetOf(s.cfg), 'worker');
  try {
    await until('usage rows written to agent_runs', async () => (await redis.xlen(usageStreamKey(s.cfg.QUEUE_PREFIX))) === 0, timeoutMs);
  } finally {
    redis.disconnect();
  }
}
