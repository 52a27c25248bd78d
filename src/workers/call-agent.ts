import { z } from 'zod';
import type { PromptContext } from '../shared/agents/define-agent.js';
import type { AgentResult, BilledCall, ServiceTier, TokenUsage } from '../shared/core/types.js';
import { PromptBuildError } from '../shared/core/errors.js';
import { billedOf } from '../shared/core/outcomes.js';
import { DelayJobError, type JobContext } from './middleware.js';
import type { BatchTier } from './batch-tier.js';
import { inSpan, SpanKind } from '../shared/telemetry/tracing.js';
import { modelCallAttributes, modelCallContent, modelCallName, modelCallUsage } from '../shared/telemetry/gen-ai.js';
import { billedCall } from '../shared/infra/llm/llm-client.js';

/** The slice of the LLM client the terminal call needs (see src/shared/infra/llm/llm-client.ts). */
export interface GenerateFn {
  generate(req: {
    model: string;
    system?: string;
    prompt: string;
    responseJsonSchema?: unknown;
    signal?: AbortSignal;
    onText?: (text: string) => void | Promise<void>;
    tier?: Exclude<ServiceTier, 'batch'>;
  }): Promise<{ text: string; json?: unknown; usage: TokenUsage; model: string; costUsd: number; tier?: ServiceTier; standardCostUsd?: number }>;
}

/** One model call as metrics see it: `code` is the stable error code, absent when the call answered usably. */
export interface ModelCallEvent {
  model: string;
  seconds: number;
  code?: string;
  /** The provider's HTTP status, when it answered with an error. */
  httpStatus?: number;
}

/** A model answer that does not match the action's output schema: retryable, models are not deterministic. */
export class InvalidOutputError extends Error {
  override name = 'InvalidOutputError';
  readonly code = 'EBADOUTPUT';
  readonly retryable = true;
  constructor(
    message: string,
    /** The answer was billed all the same. */
    readonly billed?: BilledCall,
  ) {
    super(message);
  }
}

const schemaCache = new WeakMap<z.ZodType, unknown>();
function jsonSchemaOf(schema: z.ZodType): unknown {
  let json = schemaCache.get(schema);
  if (!json) {
    json = z.toJSONSchema(schema);
    schemaCache.set(schema, json);
  }
  return json;
}

/**
 * The innermost step of the guard chain: builds the prompt, calls the model for JSON that matches the
 * action's output schema, validates the answer and returns it as an AgentResult.
 */
export function createAgentCall(deps: {
  llm: GenerateFn;
  /**
   * Retrieval bound to one org, so an agent can never search another tenant's facts, and to the tables the action
   * declares (`knowledge`), so an ingest that invalidates its readers' answers misses none.
   */
  searchFor?: (orgId: string, tables: readonly string[], ctx: JobContext) => PromptContext['search'];
  onText?: (ctx: JobContext) => ((text: string) => Promise<void>) | undefined;
  /** The model answered (before its output is checked): the job's `validating` stage. */
  onAnswer?: (ctx: JobContext) => void;
  /** Every model call, answered or not (latency and errors per model for metrics). */
  onModelCall?: (e: ModelCallEvent) => void;
  /** Puts prompt and answer text on the model call's span (OTEL_CAPTURE_CONTENT); off, spans carry no text. */
  captureContent?: boolean;
  /** Batch-tier jobs: their call goes into a Gemini batch (absent: they run on the standard tier). */
  batch?: Pick<BatchTier, 'generate'>;
}) {
  return async (ctx: JobContext): Promise<AgentResult> => {
    const started = performance.now();
    const tables = ctx.action.knowledge;
    let prompt;
    try {
      prompt = await ctx.action.prompt(ctx.input, { orgId: ctx.orgId, search: tables?.length ? deps.searchFor?.(ctx.orgId, tables, ctx) : undefined });
    } catch (err) {
      // No model was asked anything yet: the retrieval's failure (or the agent's) is never the model's.
      throw err instanceof DelayJobError ? err : new PromptBuildError(err);
    }
    // Built only when a span is started (tracing off: never), as the job span's are.
    const attributes = () => modelCallAttributes({ model: ctx.model, orgId: ctx.orgId, jobId: ctx.job.id, agent: ctx.agentName, action: ctx.actionName, stream: Boolean(ctx.job.data.stream) });
    // GenAI semantic conventions: one CLIENT span per call, named "<operation> <model>", child of the attempt.
    const call = await inSpan(modelCallName(ctx.model), { kind: SpanKind.CLIENT, attributes, parentSpan: ctx.span }, async (span) => {
      const callStarted = performance.now();
      const seconds = () => (performance.now() - callStarted) / 1000;
      let res;
      const req: Parameters<GenerateFn['generate']>[0] = {
        model: ctx.model,
        system: prompt.system,
        prompt: prompt.user,
        responseJsonSchema: jsonSchemaOf(ctx.action.output),
        signal: ctx.signal,
        onText: deps.onText?.(ctx),
      };
      // Only an online tier other than standard is sent; set on the request itself, not on a copy of it per call
      // (a batch-tier job's, 'batch', never is: its fallback to the standard tier sends none).
      if (ctx.tier && ctx.tier !== 'standard' && ctx.tier !== 'batch') req.tier = ctx.tier;
      try {
        if (ctx.tier === 'batch' && deps.batch) res = await deps.batch.generate(ctx, req, () => deps.llm.generate(req));
        else res = await deps.llm.generate(req);
      } catch (err) {
        // Waiting for its batch: no model was called, and nothing failed. Thrown past the span, so it is no error there.
        if (err instanceof DelayJobError) {
          span.addEvent('agentq.batch.waiting', { 'agentq.delay.ms': err.delayMs });
          return { waiting: err };
        }
        const e = err as { code?: unknown; status?: unknown };
        // The model answered before failing (a refusal, text that is not JSON, a stream cut): billed all the same.
        const billed = billedOf(err);
        if (billed && span.isRecording()) span.setAttributes(modelCallUsage(billed));
        deps.onModelCall?.({ model: ctx.model, seconds: seconds(), code: typeof e.code === 'string' ? e.code : 'EUNKNOWN', ...(typeof e.status === 'number' ? { httpStatus: e.status } : {}) });
        throw err;
      }
      deps.onAnswer?.(ctx);
      if (span.isRecording()) {
        span.setAttributes(modelCallUsage(res));
        if (deps.captureContent) span.setAttributes(modelCallContent({ system: prompt.system, user: prompt.user, output: res.text }));
      }
      const parsed = ctx.action.output.safeParse(res.json);
      if (!parsed.success) {
        deps.onModelCall?.({ model: ctx.model, seconds: seconds(), code: 'EBADOUTPUT' });
        const first = parsed.error.issues[0];
        throw new InvalidOutputError(`model output does not match ${ctx.agentName}.${ctx.actionName} schema at ${first.path.join('.') || '(root)'}: ${first.message}`, billedCall(res));
      }
      deps.onModelCall?.({ model: ctx.model, seconds: seconds() });
      return { res, parsed };
    });
    if ('waiting' in call) throw call.waiting;
    const { res, parsed } = call;
    const data = ctx.action.finalize ? ctx.action.finalize(parsed.data, prompt.extras) : parsed.data;
    return {
      success: true,
      data,
      tokensUsed: res.usage,
      costUsd: res.costUsd,
      ...(res.tier && res.tier !== 'standard' ? { tier: res.tier } : {}),
      ...(res.standardCostUsd !== undefined ? { standardCostUsd: res.standardCostUsd } : {}),
      durationMs: Math.round(performance.now() - started),
      model: res.model,
    };
  };
}
