import type { Job } from 'bullmq';
import { childOutcomes, childrenBilled, completedChildUsd, sumEmbedding, sumUsd } from './child-outcomes.js';
import type { RedisClient } from '../infra/redis/connection.js';
import { jobHashKey } from '../core/queue-keys.js';
import { embeddingSpend, failedChildResult, type FlowChildRef, type FlowChildResult, type ParallelFlowData, type ParallelFlowResult } from './flow-data.js';
import type { FlowPreset } from './presets.js';

/**
 * Result keys in request order: "Agent:action" for the first task of a pair, "Agent:action#2", "#3"...
 * for the repeats, so two tasks of the same action never overwrite each other.
 */
export function resultKeys(pairs: string[]): string[] {
  const seen = new Map<string, number>();
  return pairs.map((pair) => {
    const n = (seen.get(pair) ?? 0) + 1;
    seen.set(pair, n);
    return n === 1 ? pair : `${pair}#${n}`;
  });
}

const MISSING = 'child job was removed before it finished (cancelled)';

/** The parent's processor: every child has settled (completed, or failed for good and ignored). */
export async function settleFanOut(
  job: Job<ParallelFlowData>,
  childQueueKey: string,
  presets: Map<string, FlowPreset>,
  redis: Pick<RedisClient, 'hget' | 'hmget'>,
): Promise<ParallelFlowResult> {
  const children = job.data.children as FlowChildRef[];
  const [outcomes, billed] = await Promise.all([childOutcomes(job, childQueueKey), childrenBilled(redis, jobHashKey(job.queueQualifiedName, job.id!), childQueueKey, children.map((c) => c.id))]);
  const results: Record<string, FlowChildResult> = {};
  let totalCostUsd = 0;
  for (const child of children) {
    const outcome = outcomes.get(child.id);
    const b = billed.get(child.id);
    // Billed beyond the result: a failed child's attempts (its whole cost), a completed child's earlier attempts.
    const extra = b?.usd ?? 0;
    const result: FlowChildResult = outcome?.state === 'completed' ? outcome.result : failedChildResult(outcome?.error ?? MISSING, child.model, extra);
    // Its embedding calls, which neither its result nor its cost carries (every run's, from the parent's hash).
    results[child.key] = b?.embedding.tokens ? { ...result, embedding: embeddingSpend(b.embedding.tokens, b.embedding.costUsd) } : result;
    totalCostUsd = sumUsd(totalCostUsd, outcome?.state === 'completed' ? completedChildUsd(result.costUsd ?? 0, b) : result.costUsd);
  }
  const preset = job.data.preset ? presets.get(job.data.preset) : undefined;
  return {
    results,
    totalDurationMs: Date.now() - job.timestamp,
    totalCostUsd,
    embedding: sumEmbedding(children.map((c) => billed.get(c.id)?.embedding)),
    ...(preset ? preset.mapResult(results) : {}),
  };
}
