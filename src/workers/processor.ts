import { DelayedError, UnrecoverableError, type Job } from 'bullmq';
import type { AgentAction, AgentDefinition, ModelTier } from '../shared/agents/define-agent.js';
import { ValidationError } from '../shared/core/errors.js';
import type { Logger } from '../shared/core/logger.js';
import { CANCELLED_REASON } from '../shared/core/cancel.js';
import type { AgentRun } from '../shared/infra/db/agent-runs.js';
import { estimateTokens } from '../shared/queue/estimate-tokens.js';
import type { AgentJobData, AgentResult } from '../shared/core/types.js';
import type { FairGate } from './fair-gate.js';
import { DelayJobError, type JobContext } from './middleware.js';

export interface AgentResolver {
  resolve(agent: string, action: string): { agent: AgentDefinition; action: AgentAction };
  validateInput(agent: string, action: string, input: unknown): unknown;
}

export interface RunRecorder {
  record(row: AgentRun): Promise<unknown>;
}

export interface ProcessorDeps {
  agents: AgentResolver;
  chain: (ctx: JobContext) => Promise<AgentResult>;
  runs: RunRecorder;
  models: Record<ModelTier, string>;
  logger: Logger;
  /** Called when a guard delays the job (rate limit, open breaker) — for metrics. */
  onDelay?: (ctx: JobContext, reason: string, delayMs: number) => void;
  /** The fair dispatcher's gate: runs only jobs that hold a slot, and parks delayed ones in their lane. */
  gate?: Pick<FairGate, 'admit' | 'defer'>;
}

/** Errors such as the breaker's `OpenCircuitError` carry the Redis time of the next probe. */
function retryAtOf(err: unknown): number | undefined {
  const e = err as { code?: string; retryAtMs?: number; msBeforeNext?: number };
  if (e?.code !== 'EOPENBREAKER') return undefined;
  return typeof e.msBeforeNext === 'number' ? Date.now() + e.msBeforeNext : e.retryAtMs;
}

/**
 * One attempt of one agent job: validate, run the guard chain, record the attempt in `agent_runs`, and
 * turn outcomes into BullMQ semantics (delay without using an attempt, retry, or fail for good).
 */
export function createAgentProcessor(deps: ProcessorDeps) {
  return async (job: Job<AgentJobData, AgentResult>, token?: string, signal?: AbortSignal): Promise<AgentResult> => {
    const data = job.data;
    const logger = deps.logger.child({
      jobId: job.id,
      orgId: data.orgId,
      agent: data.agent,
      action: data.action,
      ...(data.requestId ? { requestId: data.requestId } : {}),
      ...(data.userId ? { userId: data.userId } : {}),
    });
    let resolved: { agent: AgentDefinition; action: AgentAction };
    let input: unknown;
    try {
      resolved = deps.agents.resolve(data.agent, data.action);
      input = deps.agents.validateInput(data.agent, data.action, data.input);
    } catch (err) {
      // Jobs are validated at enqueue; one that still fails here was written by hand and can never succeed.
      if (err instanceof ValidationError) throw new UnrecoverableError(`invalid job: ${err.message}`);
      throw err;
    }
    // After validation, so a job that can never run fails at once instead of waiting for a slot first.
    if (deps.gate && !(await deps.gate.admit(job, token))) throw new DelayedError();

    const controller = new AbortController();
    const onCancel = () => controller.abort(new Error(CANCELLED_REASON));
    if (signal?.aborted) onCancel();
    signal?.addEventListener('abort', onCancel, { once: true });

    const model = data.model ?? deps.models[resolved.action.model];
    const ctx: JobContext = {
      job,
      token,
      orgId: data.orgId,
      agent: resolved.agent,
      agentName: data.agent,
      actionName: data.action,
      action: resolved.action,
      input,
      model,
      signal: controller.signal,
      logger,
      estimatedTokens: estimateTokens(input),
      // Admitted by the fair dispatcher, which charged the first call to this model already.
      ...(deps.gate ? { prepaid: { model } } : {}),
    };
    const attempt = job.attemptsMade + 1;
    const started = performance.now();

    const record = async (row: Partial<AgentRun> & Pick<AgentRun, 'state'>) => {
      try {
        await deps.runs.record({
          jobId: job.id!,
          attempt,
          orgId: data.orgId,
          agent: data.agent,
          action: data.action,
          model: ctx.model,
          inputTokens: 0,
          outputTokens: 0,
          costUsd: 0,
          durationMs: Math.round(performance.now() - started),
          cacheHit: null,
          error: null,
          requestId: data.requestId ?? null,
          ...row,
        });
      } catch (err) {
        // The result itself lives in Redis; a lost usage row must not turn a good answer into a retry.
        logger.error({ err }, 'could not record agent run');
      }
    };

    try {
      logger.debug({ attempt, model }, 'job started');
      const result = await deps.chain(ctx);
      await record({
        state: 'completed',
        model: result.model,
        inputTokens: result.tokensUsed.input,
        outputTokens: result.tokensUsed.output,
        costUsd: result.costUsd,
        cacheHit: result.cacheHit ?? null,
      });
      // 'job completed' is logged by the worker once BullMQ has accepted the result (a worker that lost its
      // lock gets here too, but its completion is refused).
      logger.debug({ attempt, model: result.model }, 'attempt succeeded');
      return result;
    } catch (err) {
      const delayUntil = err instanceof DelayJobError ? Date.now() + err.delayMs : retryAtOf(err);
      if (delayUntil !== undefined && !controller.signal.aborted) {
        const reason = err instanceof DelayJobError ? err.reason : 'breaker_open';
        deps.onDelay?.(ctx, reason, delayUntil - Date.now());
        logger.info({ reason, delayMs: delayUntil - Date.now() }, 'job delayed without using an attempt');
        if (deps.gate) await deps.gate.defer(job, token, delayUntil, reason, ctx.model);
        else await job.moveToDelayed(Math.max(delayUntil, Date.now() + 1), token);
        throw new DelayedError();
      }
      const message = err instanceof Error ? err.message : String(err);
      if (signal?.aborted) {
        await record({ state: 'failed', error: CANCELLED_REASON });
        logger.info('job cancelled while running');
        throw new UnrecoverableError(CANCELLED_REASON);
      }
      await record({ state: 'failed', error: message.slice(0, 2000) });
      const retryable = (err as { retryable?: boolean }).retryable !== false;
      logger.warn({ attempt, err: message, retryable }, 'job attempt failed');
      if (!retryable) throw new UnrecoverableError(message);
      throw err;
    } finally {
      signal?.removeEventListener('abort', onCancel);
    }
  };
}
