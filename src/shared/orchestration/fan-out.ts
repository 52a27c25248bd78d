import type { Job } from 'bullmq';
import type { AgentResult } from '../core/types.js';
import { childOutcomes, childrenBilledUsd, sumUsd } from './child-outcomes.js';
import type { RedisClient } from '../infra/redis/connection.js';
import { jobHashKey } from '../core/queue-keys.js';
import { failedChildResult, type FlowChildRef, type ParallelFlowData, type ParallelFlowResult } from './flow-data.js';
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
  const [outcomes, billed] = await Promise.all([childOutcomes(job, childQueueKey), childrenBilledUsd(redis, jobHashKey(job.queueQualifiedName, job.id!), childQueueKey, children.map((c) => c.id))]);
  const results: Record<string, AgentResult> = {};
  let totalCostUsd = 0;
  for (const child of children) {
    const outcome = outcomes.get(child.id);
    // Billed beyond the result: a failed child's attempts (its whole cost), a completed child's earlier attempts.
    const extra = billed.get(child.id) ?? 0;
    const result = outcome?.state === 'completed' ? outcome.result : failedChildResult(outcome?.error ?? MISSING, child.model, extra);
    results[child.key] = result;
    totalCostUsd = sumUsd(totalCostUsd, outcome?.state === 'completed' ? sumUsd(result.costUsd ?? 0, extra) : result.costUsd);
  }
  const preset = job.data.preset ? presets.get(job.data.preset) : undefined;
  return {
    results,
    totalDurationMs: Date.now() - job.timestamp,
    totalCostUsd,
    ...(preset ? preset.mapResult(results) : {}),
  };
}
