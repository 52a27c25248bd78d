import type { Job } from 'bullmq';
import { childOutcomes, childrenBilled, childSpend, sumEmbedding, sumUsd, type ChildBilled, type ChildOutcome } from './child-outcomes.js';
import type { RedisClient } from '../infra/redis/connection.js';
import { jobHashKey } from '../core/queue-keys.js';
import { failedChildResult, type FlowChildRef, type FlowChildResult, type ParallelFlowData, type ParallelFlowResult } from './flow-data.js';
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
  const spend = fanOutSpend(children, outcomes, billed);
  const preset = job.data.preset ? presets.get(job.data.preset) : undefined;
  return {
    ...spend,
    totalDurationMs: Date.now() - job.timestamp,
    ...(preset ? preset.mapResult(spend.results) : {}),
  };
}

/**
 * The children's results and what they cost, from how each ended and what its rows billed (`childrenBilled`): at the
 * settle, and again at each read of a settled flow (flow-service.ts), whose children's sums may have grown since (a
 * stalled child's run whose completion BullMQ refused can end, and bill its row, after the flow settled).
 */
export function fanOutSpend(
  children: FlowChildRef[],
  outcomes: Map<string, ChildOutcome>,
  billed: Map<string, ChildBilled>,
): Pick<ParallelFlowResult, 'results' | 'totalCostUsd' | 'embedding'> {
  const results: Record<string, FlowChildResult> = {};
  let totalCostUsd = 0;
  for (const child of children) {
    const outcome = outcomes.get(child.id);
    const b = billed.get(child.id);
    const spend = childSpend(outcome, b);
    // A child's `costUsd` is what it cost, as `totalCostUsd` counts it, so the results add up to the total: a failed
    // child's attempts, a completed child's completed rows (a stalled run whose completion BullMQ refused, too) and
    // its earlier attempts (`completedChildUsd`), as a pipeline's step reports it. Until 2026-12-07 a completed child
    // showed its accepted run's cost alone; `tokensUsed` stays that run's (its result's).
    const result: FlowChildResult =
      outcome?.state === 'completed' ? { ...outcome.result, costUsd: spend.costUsd ?? 0 } : failedChildResult(outcome?.error ?? MISSING, child.model, spend.costUsd ?? 0);
    // Its embedding calls, which neither its result nor its cost carries (every run's, from the parent's hash).
    results[child.key] = spend.embedding ? { ...result, embedding: spend.embedding } : result;
    totalCostUsd = sumUsd(totalCostUsd, spend.costUsd ?? 0);
  }
  return { results, totalCostUsd, embedding: sumEmbedding(children.map((c) => billed.get(c.id)?.embedding)) };
}

/**
 * A settled flow's result with its costs read again (`fanOutSpend` now): each child's cost never below the settle's,
 * and the total the sum of those. The parent's sums only grow, but a child's rows billed by a worker of the version
 * that summed them on the child's hash alone (before 2026-12-07 03:14) are gone with that hash (retention), so a
 * child reads less now than the settle recorded. Until 2026-12-07 the total was the larger of the two totals: with
 * one child reading less (its hash gone) and another more (a refused stalled run that ended after the settle), that
 * is below both children's figures added, and the results no longer added up to it.
 * One child with both (old rows on its removed hash and a late row) still reads low: the settle recorded one figure
 * for it, so the old rows' part of it cannot be told from the sums that grew since: with O its old rows and G what
 * its sums grew after the settle, it reads the larger of (settle) and (settle - O + G), short of the ledger by the
 * smaller of O and G.
 */
export function spendReadAgain(settled: ParallelFlowResult, now: ReturnType<typeof fanOutSpend>): ParallelFlowResult {
  const results: Record<string, FlowChildResult> = {};
  let totalCostUsd = 0;
  for (const [key, r] of Object.entries(now.results)) {
    const was = settled.results[key];
    const costUsd = was ? Math.max(r.costUsd ?? 0, was.costUsd ?? 0) : (r.costUsd ?? 0);
    results[key] = was ? { ...r, costUsd } : r;
    totalCostUsd = sumUsd(totalCostUsd, costUsd);
  }
  return { ...settled, results, totalCostUsd, embedding: now.embedding };
}
