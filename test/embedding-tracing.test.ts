import Fastify from 'fastify';
import { context, propagation, SpanKind, trace } from '@opentelemetry/api';
import { InMemorySpanExporter, NodeTracerProvider, SimpleSpanProcessor, type ReadableSpan } from '@opentelemetry/sdk-trace-node';
import { z } from 'zod';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startGeminiEmulator, type GeminiEmulator } from '../dev/gemini-emulator/emulator.js';
import { createLogger } from '../src/shared/core/logger.js';
import type { AgentResult } from '../src/shared/core/types.js';
import { createLlmClient, type LlmClient } from '../src/shared/infra/llm/llm-client.js';
import { registerHttpTracing } from '../src/producers/http-tracing.js';
import { createAgentProcessor } from '../src/workers/processor.js';
import { fakeAgentJob } from './helpers/fake-job.js';

/**
 * Every embedContent request (the semantic cache's lookup and store, a prompt's knowledge search, an ingestion's
 * batches) is a GenAI-convention CLIENT span, a child of the span it runs under (a job attempt's, an API
 * request's), read here from an in-memory exporter against the Gemini emulator.
 */
const exporter = new InMemorySpanExporter();
let provider: NodeTracerProvider;
let emu: GeminiEmulator;
let llm: LlmClient;
const MODEL = 'gemini-embedding-001';
const ERROR = 2;

beforeAll(async () => {
  provider = new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
  provider.register();
  emu = await startGeminiEmulator();
  llm = createLlmClient({ apiKey: 'test-key', baseUrl: emu.url, timeoutMs: 5000, embeddingModel: MODEL, logger: createLogger({ level: 'silent' }) });
});
beforeEach(() => emu.clearFaults());
afterEach(() => exporter.reset());
afterAll(async () => {
  await emu.close();
  await provider.shutdown();
  // The files of a worker share the process: the API goes back to its no-op.
  trace.disable();
  context.disable();
  propagation.disable();
});

const embedSpans = () => exporter.getFinishedSpans().filter((s) => s.name === `embeddings ${MODEL}`);
const parentOf = (s: ReadableSpan) => s.parentSpanContext?.spanId;

const job = () => fakeAgentJob({ id: 'job-embed-1', attempts: 1 });

describe('embedding spans', () => {
  it("one span per embedContent request (per batch of 100), children of the job attempt's span, GenAI attributes, estimated tokens under agentq's name", async () => {
    const texts = Array.from({ length: 150 }, (_, i) => `text number ${i} about supply chain risk`);
    const processor = createAgentProcessor({
      agents: { resolve: () => ({ agent: {} as never, action: { model: 'fast', output: z.object({ ok: z.boolean() }), prompt: async () => ({ user: 'q' }) } as never }), validateInput: (_a, _b, input) => input },
      // A guard's embedding call (the semantic cache's lookup, a knowledge search) made inside the attempt.
      chain: async () => {
        await llm.embed(texts, { taskType: 'RETRIEVAL_QUERY' });
        return { success: true, data: { ok: true }, tokensUsed: { input: 0, output: 0 }, costUsd: 0, model: 'gemini-fast', durationMs: 1 } as AgentResult;
      },
      runs: { record: async () => undefined },
      models: { fast: 'gemini-fast', pro: 'gemini-pro' },
      logger: createLogger({ level: 'silent' }),
    });
    await processor(job(), 't');

    const attempt = exporter.getFinishedSpans().find((s) => s.name === 'process RiskAnalyzer:analyze_risks');
    expect(attempt).toBeDefined();
    const spans = embedSpans();
    expect(spans).toHaveLength(2);
    const tokens = (batch: string[]) => batch.reduce((n, t) => n + Math.ceil(t.length / 4), 0);
    for (const [span, batch] of [[spans[0], texts.slice(0, 100)], [spans[1], texts.slice(100)]] as const) {
      expect(span.kind).toBe(SpanKind.CLIENT);
      expect(span.spanContext().traceId).toBe(attempt!.spanContext().traceId);
      expect(parentOf(span)).toBe(attempt!.spanContext().spanId);
      expect(span.attributes).toMatchObject({
        'gen_ai.operation.name': 'embeddings',
        'gen_ai.provider.name': 'gcp.gemini',
        'gen_ai.system': 'gcp.gemini',
        'gen_ai.request.model': MODEL,
        'gen_ai.embeddings.dimension.count': 768,
        'agentq.embedding.texts': batch.length,
        'agentq.embedding.task_type': 'RETRIEVAL_QUERY',
        'agentq.usage.input_tokens': tokens([...batch]),
        'agentq.usage.estimated': true,
      });
      // Gemini reports no usage for embeddings: the estimate is never passed off as a reported count.
      expect(Object.keys(span.attributes).filter((k) => k.startsWith('gen_ai.usage.'))).toEqual([]);
      // No text of the request on the span.
      expect(JSON.stringify(span.attributes)).not.toContain('supply chain');
    }
  });

  it("an API request's embedding call (a knowledge ingest, a search) is a child of the request span", async () => {
    const app = Fastify();
    registerHttpTracing(app as never);
    app.post('/embed', async () => ({ n: (await llm.embed(['one document'], { taskType: 'RETRIEVAL_DOCUMENT' })).length }));
    await app.ready();
    try {
      const res = await app.inject({ method: 'POST', url: '/embed', payload: {} });
      expect(res.json()).toEqual({ n: 1 });
    } finally {
      await app.close();
    }
    const server = exporter.getFinishedSpans().find((s) => s.name === 'POST /embed');
    const [span] = embedSpans();
    expect(server).toBeDefined();
    expect(embedSpans()).toHaveLength(1);
    expect(parentOf(span)).toBe(server!.spanContext().spanId);
    expect(span.attributes['agentq.usage.input_tokens']).toBe(Math.ceil('one document'.length / 4));
  });

  it('a failed request is an error span with its stable code', async () => {
    emu.script({ status: 429, retryAfterS: 2, match: { kind: 'embed' } });
    await expect(llm.embed(['a', 'b'])).rejects.toMatchObject({ code: 'ERATELIMIT' });
    const [span] = embedSpans();
    expect(embedSpans()).toHaveLength(1);
    expect(span.status.code).toBe(ERROR);
    expect(span.attributes['error.type']).toBe('ERATELIMIT');
  });
});
