import type { Job } from 'bullmq';
import type { AgentResult } from '../core/types.js';
import { childBilledField, childEmbeddingTokensField, childEmbeddingUsdField, childRunsField, JOB_BILLED_FIELD, jobHashKey } from '../core/queue-keys.js';
import type { RedisClient } from '../infra/redis/connection.js';
import { embeddingSpend, type EmbeddingSpend } from './flow-data.js';

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

/** A child's embedding calls, from its rows (estimated tokens: Gemini reports none; `costUsd` at the embedding price). */
export interface ChildEmbedding {
  tokens: number;
  costUsd: number;
}

/** What the parent's hash (and the child's) hold of a child's rows: see `childrenBilled`. */
export interface ChildBilled {
  /** Billed beyond its result: a failed child's whole cost, a completed child's earlier attempts'. */
  usd: number;
  /**
   * Its completed rows' cost: the accepted run's (its result's) and any run's whose completion BullMQ refused (a
   * stalled run's re-run completed instead). 0 from a worker of the version before (the result's cost is then read).
   */
  completedUsd: number;
  /** Every row's embedding calls (no result carries them), completed ones included. */
  embedding: ChildEmbedding;
}

/** A completed child's cost: its completed rows' (its result's at least), plus what its earlier attempts were billed. */
export const completedChildUsd = (resultUsd: number, billed: ChildBilled | undefined) =>
  sumUsd(Math.max(resultUsd, billed?.completedUsd ?? 0), billed?.usd ?? 0);

/**
 * A child's (or step's) cost and embedding calls from how it ended and what its rows billed: a completed one's
 * `completedChildUsd`, a failed one's billed attempts (none: no cost), its embedding calls when it made any.
 */
export function childSpend(outcome: ChildOutcome | undefined, billed: ChildBilled | undefined): { costUsd?: number; embedding?: EmbeddingSpend } {
  const usd = billed?.usd ?? 0;
  const costUsd = outcome?.state === 'completed' ? completedChildUsd(outcome.result.costUsd ?? 0, billed) : usd > 0 ? usd : undefined;
  return { ...(costUsd !== undefined ? { costUsd } : {}), ...(billed?.embedding.tokens ? { embedding: embeddingSpend(billed.embedding.tokens, billed.embedding.costUsd) } : {}) };
}

/**
 * What each child was billed that its result does not say: the cost of the rows of its failed attempts and delayed
 * runs, its completed rows' (a run whose completion BullMQ refused is in no result), and every row's embedding calls, summed as each was appended to the usage stream (includes/usage-bill.lua),
 * so the same numbers as its `agent_runs` rows. Read from the parent's hash (`childBilledField`, the embedding
 * fields), which holds them after retention removed the child's (a failed child's, often before its parent settles:
 * until 2026-12-07 its cost read as 0), and the cost also from the child's own (`JOB_BILLED_FIELD`) while it is kept:
 * the larger, since a row billed by a worker of the version before the parent's field is on the child's only. All in
 * one tick: one round trip.
 */
export async function childrenBilled(redis: Pick<RedisClient, 'hget' | 'hmget'>, parentKey: string, childQueueKey: string, ids: string[]): Promise<Map<string, ChildBilled>> {
  if (ids.length === 0) return new Map();
  const [onParent, onChildren] = await Promise.all([
    redis.hmget(parentKey, ...ids.flatMap((id) => [childBilledField(id), childRunsField(id), childEmbeddingTokensField(id), childEmbeddingUsdField(id)])),
    Promise.all(ids.map((id) => redis.hget(jobHashKey(childQueueKey, id), JOB_BILLED_FIELD))),
  ]);
  const num = (v: string | null | undefined) => Number(v ?? 0) || 0;
  return new Map(
    ids.map((id, i) => {
      const [usd, completedUsd, tokens, embeddingUsd] = onParent.slice(4 * i, 4 * i + 4).map(num);
      return [id, { usd: Math.max(usd, num(onChildren[i])), completedUsd: roundUsd(completedUsd), embedding: { tokens, costUsd: roundUsd(embeddingUsd) } }];
    }),
  );
}

/** A USD amount without float noise (a float sum read back from Redis's HINCRBYFLOAT; the ledger keeps 8 decimals). */
export const roundUsd = (usd: number) => Math.round(usd * 1e12) / 1e12;

/** A sum of USD amounts without the float noise of the additions. */
export const sumUsd = (a: number, b: number) => roundUsd(a + b);

/**
 * The embedding calls of a flow's children or a run's steps, in order (none: a child that made none): the flow's
 * and the run's `embedding` block.
 */
export const sumEmbedding = (children: Iterable<ChildEmbedding | undefined>): EmbeddingSpend => {
  let tokens = 0;
  let costUsd = 0;
  for (const c of children) {
    tokens += c?.tokens ?? 0;
    costUsd = sumUsd(costUsd, c?.costUsd ?? 0);
  }
  return embeddingSpend(tokens, costUsd);
};
