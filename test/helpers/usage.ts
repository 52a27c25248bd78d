import type { Pool } from 'pg';
import type { Config } from '../../src/shared/core/config.js';
import { usageStreamKey } from '../../src/shared/core/queue-keys.js';
import { queueShards } from '../../src/shared/core/queue-shards.js';
import { createRedis, redisTargetOf } from '../../src/shared/infra/redis/connection.js';
import { until } from './wait.js';

/**
 * Usage rows are written behind (Redis Stream -> the workers' run sinks -> agent_runs) and the sink deletes
 * each entry once its row is committed: an empty stream means every row appended so far is in Postgres. A
 * test that saw a job finish (its row was appended before that) waits on this before reading agent_runs.
 */
export async function usageWritten(s: { cfg: Config }, timeoutMs?: number): Promise<void> {
  // The stack's own Redis (a cluster in the cluster tests), where its usage streams live: one per queue shard
  // (QUEUE_SHARDS), each drained by the sinks of that shard's workers.
  const redis = createRedis(redisTargetOf(s.cfg), 'worker');
  const keys = queueShards(s.cfg.QUEUE_PREFIX, s.cfg.QUEUE_SHARDS).prefixes.map(usageStreamKey);
  try {
    await until('usage rows written to agent_runs', async () => (await Promise.all(keys.map((k) => redis.xlen(k)))).every((n) => n === 0), timeoutMs);
  } finally {
    redis.disconnect();
  }
}

/** A job's `agent_runs` rows (part, state, cost), by part, once every usage row appended so far is written. */
export async function ledgerRowsOf(s: { cfg: Config; infra: { db: { pool: Pool } } }, jobId: string): Promise<Array<{ part: string; state: string; cost_usd: string }>> {
  await usageWritten(s);
  return (await s.infra.db.pool.query<{ part: string; state: string; cost_usd: string }>('SELECT part, state, cost_usd FROM agent_runs WHERE job_id = $1 ORDER BY part', [jobId])).rows;
}
