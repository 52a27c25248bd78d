import type { RedisClient } from '../redis/connection.js';
import type { AgentRun } from './agent-runs.js';

/** The one field of a usage stream entry: the whole row as JSON, so a new `agent_runs` column needs no change here. */
export const RUN_FIELD = 'r';

/** Stamped with the attempt's end time here: the row's `created_at` must not move to whenever the sink commits it. */
export function encodeRun(run: AgentRun): string {
  return JSON.stringify({ ...run, createdAt: (run.createdAt ?? new Date()).toISOString() });
}

export function decodeRun(json: string): AgentRun {
  const raw = JSON.parse(json) as AgentRun & { createdAt?: string };
  return { ...raw, createdAt: raw.createdAt ? new Date(raw.createdAt) : undefined };
}

/**
 * The worker's side of write-behind usage: an attempt's row is appended to a Redis Stream (one XADD) before
 * the attempt returns, so by the time BullMQ records the job as finished its row is durable in Redis; the run
 * sink (run-sink.ts) moves it to Postgres. `redis` should be a worker connection (waits out an outage rather
 * than failing the append).
 */
export function createRunAppender({ redis, key }: { redis: Pick<RedisClient, 'xadd'>; key: string }) {
  return {
    async record(run: AgentRun): Promise<void> {
      await redis.xadd(key, '*', RUN_FIELD, encodeRun(run));
    },
    /** For a script that appends the row in a round trip it makes anyway (the result cache's store). */
    entry: { field: RUN_FIELD, encode: encodeRun },
  };
}

export type RunAppender = ReturnType<typeof createRunAppender>;
