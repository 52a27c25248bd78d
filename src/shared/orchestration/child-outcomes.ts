import type { Job } from 'bullmq';
import type { AgentResult } from '../core/types.js';
import { childBilledField, JOB_BILLED_FIELD, jobHashKey } from '../core/queue-keys.js';
import type { RedisClient } from '../infra/redis/connection.js';

export type ChildOutcome = { state: 'completed'; result: AgentResult } | { state: 'failed'; error: string };

/**
 * How a parent's children ended, read from the parent itself: BullMQ writes a child's return value (or,
 * with `ignoreDependencyOnFailure`, its failure) into the parent's hashes atomically as the child finishes,
 * so this stays correct after the child job itself has been removed by retention.
 */
export async function childOutcomes(parent: Job, childQueueKey: string): Promise<Map<string, ChildOutcome>> {
  const [values, failures] = await Promise.all([parent.getChildrenValues<AgentResult>(), parent.getIgnoredChildrenFailures()]);
  const out = new Map<string, ChildOutcome>();
  const idOf = (key: string) => (key.startsWith(`${childQueueKey}:`) ? key.slice(childQueueKey.length + 1) : undefined);
  for (const [key, error] of Object.entries(failures ?? {})) {
    const id = idOf(key);
    if (id) out.set(id, { state: 'failed', error: String(error) });
  }
  for (const [key, result] of Object.entries(values ?? {})) {
    const id = idOf(key);
    if (id) out.set(id, { state: 'completed', result });
  }
  return out;
}

/**
 * What each child was billed beyond its result: the rows of its failed attempts and delayed runs, summed as each
 * was appended to the usage stream (usage-bill-3.lua), so the same numbers as its `agent_runs` rows. A failed
 * child's whole cost; a completed child's earlier attempts'. Read from the parent's hash (`childBilledField`), which
 * holds it after retention removed the child's (a failed child's, often before its parent settles: until 2026-12-07
 * read as 0), and from the child's own (`JOB_BILLED_FIELD`) while it is kept: the larger, since a row billed by a
 * worker of the version before the parent's field is on the child's only. All in one tick: one round trip.
 */
export async function childrenBilledUsd(redis: Pick<RedisClient, 'hget' | 'hmget'>, parentKey: string, childQueueKey: string, ids: string[]): Promise<Map<string, number>> {
  if (ids.length === 0) return new Map();
  const [onParent, onChildren] = await Promise.all([
    redis.hmget(parentKey, ...ids.map(childBilledField)),
    Promise.all(ids.map((id) => redis.hget(jobHashKey(childQueueKey, id), JOB_BILLED_FIELD))),
  ]);
  const usd = (v: string | null | undefined) => Number(v ?? 0) || 0;
  return new Map(ids.map((id, i) => [id, Math.max(usd(onParent[i]), usd(onChildren[i]))]));
}

/** A sum of USD amounts without the float noise of the additions (the ledger keeps 8 decimals). */
export const sumUsd = (a: number, b: number) => Math.round((a + b) * 1e12) / 1e12;
