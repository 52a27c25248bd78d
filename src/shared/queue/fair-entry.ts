import type { ModelTier } from '../agents/define-agent.js';
import type { AgentJobData } from '../core/types.js';
import { batchLane, type FairEntry } from '../fair/index.js';
import { estimateTokens } from './estimate-tokens.js';

/**
 * The dispatcher's lane model of a job: the model it calls first (its explicit model, else its action's
 * tier), or that model's batch lane for a batch-tier job (`batchLane`), which the online RPM/TPM buckets
 * do not limit: Gemini's Batch Mode has quotas of its own.
 */
export function laneModelOf(data: Pick<AgentJobData, 'agent' | 'action' | 'model' | 'tier'>, agents: { resolve(agent: string, action: string): { action: { model: ModelTier } } }, models: Record<ModelTier, string>): string {
  const model = firstModelOf(data, agents, models);
  return data.tier === 'batch' ? batchLane(model) : model;
}

function firstModelOf(data: Pick<AgentJobData, 'agent' | 'action' | 'model'>, agents: { resolve(agent: string, action: string): { action: { model: ModelTier } } }, models: Record<ModelTier, string>): string {
  if (data.model) return data.model;
  try {
    return models[agents.resolve(data.agent, data.action).action.model];
  } catch {
    // An unknown agent fails validation in the processor; until then it waits in the fast tier's lane.
    return models.fast;
  }
}

/** What the fair dispatcher needs of an existing job (one that reached a worker without a slot). */
export function fairEntryOf(
  job: { id?: string; data: AgentJobData; opts: { priority?: number } },
  agents: { resolve(agent: string, action: string): { action: { model: ModelTier } } },
  models: Record<ModelTier, string>,
): FairEntry {
  return {
    jobId: job.id!,
    orgId: job.data.orgId,
    model: laneModelOf(job.data, agents, models),
    estTokens: estimateTokens(job.data.input),
    ...(job.opts.priority ? { priority: job.opts.priority } : {}),
  };
}
