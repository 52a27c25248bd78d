import type { Job } from 'bullmq';
import { context, propagation, trace } from '@opentelemetry/api';
import { InMemorySpanExporter, NodeTracerProvider, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-node';
import { z } from 'zod';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../src/shared/core/logger.js';
import { DelayJobError } from '../src/shared/core/outcomes.js';
import type { AgentJobData, AgentResult } from '../src/shared/core/types.js';
import { LlmError } from '../src/shared/infra/llm/llm-errors.js';
import { createAgentCall } from '../src/workers/call-agent.js';
import type { JobContext } from '../src/workers/middleware.js';
import { createAgentProcessor } from '../src/workers/processor.js';
import { fakeAgentJob } from './helpers/fake-job.js';

/**
 * What the attempt's and the model call's spans say about how an attempt ended, read from an in-memory exporter:
 * no Redis, no gate, the processor around a chain each test gives.
 */
const OK = 1;
const ERROR = 2;
const UNSET = 0;
const exporter = new InMemorySpanExporter();
let provider: NodeTracerProvider;
beforeAll(() => {
  provider = new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
  provider.register();
});
afterEach(() => exporter.reset());
afterAll(async () => {
  await provider.shutdown();
  // The files of a worker share the process: the API goes back to its no-op.
  trace.disable();
  context.disable();
  propagation.disable();
});

const silent = createLogger({ level: 'silent' });
const MODEL = 'gemini-fast';

const job = (o: { attemptsMade: number; attempts: number; tier?: 'batch' }) =>
  // No gate: a delay moves the job itself.
  fakeAgentJob({ attemptsMade: o.attemptsMade, attempts: o.attempts, data: o.tier ? { tier: o.tier } : {}, extra: { moveToDelayed: async () => undefined } });

function processorWith(chain: (ctx: JobContext) => Promise<AgentResult>) {
  return createAgentProcessor({
    agents: { resolve: () => ({ agent: {} as never, action: { model: 'fast', output: z.object({ score: z.number() }), prompt: async () => ({ user: 'q' }) } as never }), validateInput: (_a, _b, input) => input },
    chain,
    runs: { record: async () => undefined },
    models: { fast: MODEL, pro: 'gemini-pro' },
    logger: silent,
  });
}

const settle = (p: Promise<unknown>) => p.then(() => undefined, (e: unknown) => e);
const attemptSpan = () => {
  const spans = exporter.getFinishedSpans().filter((s) => s.name.startsWith('process '));
  expect(spans).toHaveLength(1);
  return spans[0];
};

describe("the attempt span's outcome", () => {
  const provider500 = async (): Promise<AgentResult> => {
    throw new LlmError('EPROVIDER', 'Gemini API 500: internal', { status: 500 });
  };

  it('is retry for a retryable failure with attempts left', async () => {
    await settle(processorWith(provider500)(job({ attemptsMade: 0, attempts: 3 }), 't'));
    const span = attemptSpan();
    expect(span.attributes['agentq.outcome']).toBe('retry');
    expect(span.status.code).toBe(ERROR);
  });

  it('is failed for a retryable failure of the last attempt: BullMQ dead-letters the job, no retry follows', async () => {
    await settle(processorWith(provider500)(job({ attemptsMade: 2, attempts: 3 }), 't'));
    const span = attemptSpan();
    expect(span.attributes['agentq.outcome']).toBe('failed');
    expect(span.attributes['error.type']).toBe('EPROVIDER');
    expect(span.status.code).toBe(ERROR);
  });

  it('is failed for the one attempt a DLQ retry gives (attempts kept, none left after it)', async () => {
    await settle(processorWith(provider500)(job({ attemptsMade: 3, attempts: 3 }), 't'));
    expect(attemptSpan().attributes['agentq.outcome']).toBe('failed');
  });
});

describe('a batch-tier job waiting for its batch', () => {
  it('is no failed model call: the model call span records the wait, not an error, and the attempt is delayed', async () => {
    const call = createAgentCall({
      llm: { generate: async () => expect.unreachable('no standard call while the batch is pending') },
      batch: {
        generate: async () => {
          throw new DelayJobError(60_000, 'waiting_for_batch');
        },
      },
    });
    const err = await settle(processorWith(call)(job({ attemptsMade: 0, attempts: 3, tier: 'batch' }), 't'));
    expect((err as Error).name).toBe('DelayedError');
    expect(attemptSpan().attributes['agentq.outcome']).toBe('delayed');
    const calls = exporter.getFinishedSpans().filter((s) => s.attributes['gen_ai.operation.name']);
    expect(calls).toHaveLength(1);
    expect(calls[0].status.code).not.toBe(ERROR);
    expect([UNSET, OK]).toContain(calls[0].status.code);
    expect(calls[0].attributes['error.type']).toBeUndefined();
    expect(calls[0].events.map((e) => [e.name, e.attributes?.['agentq.delay.ms']])).toEqual([['agentq.batch.waiting', 60_000]]);
  });
});

describe('a model call that answered and failed', () => {
  it('carries what the answer was billed (tokens, cost, response model) on its error span', async () => {
    const billed = { model: MODEL, usage: { input: 120, output: 7 }, costUsd: 0.00042, standardCostUsd: 0.00042, tier: 'standard' as const };
    const call = createAgentCall({
      llm: {
        generate: async () => {
          throw new LlmError('EBADOUTPUT', `Gemini ${MODEL} returned text that is not JSON (finishReason MAX_TOKENS, 7 chars)`, { model: MODEL, billed });
        },
      },
    });
    await settle(processorWith(call)(job({ attemptsMade: 0, attempts: 3 }), 't'));
    const calls = exporter.getFinishedSpans().filter((s) => s.attributes['gen_ai.operation.name']);
    expect(calls).toHaveLength(1);
    expect(calls[0].status.code).toBe(ERROR);
    expect(calls[0].attributes).toMatchObject({
      'error.type': 'EBADOUTPUT',
      'gen_ai.response.model': MODEL,
      'gen_ai.usage.input_tokens': 120,
      'gen_ai.usage.output_tokens': 7,
      'agentq.cost_usd': 0.00042,
    });
  });
});

describe("the attempt span's queue wait", () => {
  const answered = async (): Promise<AgentResult> => ({ success: true, data: { score: 1 }, tokensUsed: { input: 0, output: 0 }, costUsd: 0, model: MODEL, durationMs: 1 }) as AgentResult;
  const started = (o: { waitedMs: number; delayMs?: number }): Job<AgentJobData, AgentResult> => {
    const j = job({ attemptsMade: 0, attempts: 3 });
    const processedOn = Date.now();
    return { ...j, processedOn, data: { ...j.data, enqueuedAt: processedOn - o.waitedMs, ...(o.delayMs ? { delayMs: o.delayMs } : {}) } } as Job<AgentJobData, AgentResult>;
  };

  it("counts from when the job became runnable: a caller's delayMs is no queue wait, as the start latency metrics count it", async () => {
    await processorWith(answered)(started({ waitedMs: 60_500, delayMs: 60_000 }), 't');
    expect(attemptSpan().attributes['agentq.queue_wait_ms']).toBe(500);
    exporter.reset();
    await processorWith(answered)(started({ waitedMs: 300 }), 't');
    expect(attemptSpan().attributes['agentq.queue_wait_ms']).toBe(300);
  });
});
