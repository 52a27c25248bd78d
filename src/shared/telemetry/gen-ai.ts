import type { Attributes } from '@opentelemetry/api';

/**
 * OpenTelemetry GenAI semantic conventions for agentq's model calls (Gemini API). Both the current
 * `gen_ai.provider.name` and the older `gen_ai.system` are set, so backends on either version group them.
 */
export const GEN_AI_PROVIDER = 'gcp.gemini';
const OPERATION = 'generate_content';

export const modelCallName = (model: string) => `${OPERATION} ${model}`;

export function modelCallAttributes(o: { model: string; orgId: string; jobId?: string; agent: string; action: string; stream: boolean }): Attributes {
  return {
    'gen_ai.operation.name': OPERATION,
    'gen_ai.provider.name': GEN_AI_PROVIDER,
    'gen_ai.system': GEN_AI_PROVIDER,
    'gen_ai.request.model': o.model,
    'gen_ai.output.type': 'json',
    'agentq.org_id': o.orgId,
    ...(o.jobId ? { 'agentq.job.id': o.jobId } : {}),
    'agentq.agent': o.agent,
    'agentq.action': o.action,
    'agentq.stream': o.stream,
  };
}

export function modelCallUsage(res: { model: string; usage: { input: number; output: number }; costUsd: number }): Attributes {
  return {
    'gen_ai.response.model': res.model,
    'gen_ai.usage.input_tokens': res.usage.input,
    'gen_ai.usage.output_tokens': res.usage.output,
    'agentq.cost_usd': res.costUsd,
  };
}

/** Only with OTEL_CAPTURE_CONTENT: the conventions' structured messages, as JSON strings. */
export function modelCallContent(c: { system?: string; user: string; output: string }): Attributes {
  return {
    ...(c.system ? { 'gen_ai.system_instructions': JSON.stringify([{ type: 'text', content: c.system }]) } : {}),
    'gen_ai.input.messages': JSON.stringify([{ role: 'user', parts: [{ type: 'text', content: c.user }] }]),
    'gen_ai.output.messages': JSON.stringify([{ role: 'assistant', parts: [{ type: 'text', content: c.output }], finish_reason: 'stop' }]),
  };
}

const EMBEDDINGS = 'embeddings';

export const embeddingCallName = (model: string) => `${EMBEDDINGS} ${model}`;

/**
 * One embedding request (a batch of texts). Gemini's embedContent answer carries no usage, so the conventions'
 * `gen_ai.usage.input_tokens` is never set: a backend would sum it with the model calls' reported counts. The
 * local estimate (about 4 characters a token, as the ledger's embedding_tokens) goes under agentq's own name,
 * flagged. The texts themselves are never put on the span (the conventions define no content attribute for
 * embeddings).
 */
export function embeddingCallAttributes(o: { model: string; texts: number; dims: number; estimatedInputTokens: number; taskType?: string }): Attributes {
  return {
    'gen_ai.operation.name': EMBEDDINGS,
    'gen_ai.provider.name': GEN_AI_PROVIDER,
    'gen_ai.system': GEN_AI_PROVIDER,
    'gen_ai.request.model': o.model,
    'gen_ai.embeddings.dimension.count': o.dims,
    'agentq.embedding.texts': o.texts,
    ...(o.taskType ? { 'agentq.embedding.task_type': o.taskType } : {}),
    'agentq.usage.input_tokens': o.estimatedInputTokens,
    'agentq.usage.estimated': true,
  };
}
