import Fastify from 'fastify';
import { context, propagation, trace } from '@opentelemetry/api';
import { InMemorySpanExporter, NodeTracerProvider, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-node';
import { z } from 'zod';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { LlmError } from '../src/shared/infra/llm/llm-errors.js';
import { registerHttpTracing } from '../src/producers/http-tracing.js';
import { createAgentProcessor } from '../src/workers/processor.js';
import { captureLogs } from './helpers/ops.js';
import { buildBareApp } from './helpers/bare-app.js';
import { fakeAgentJob } from './helpers/fake-job.js';

/**
 * Log lines carry the active span's ids under OpenTelemetry's log-correlation names, so an operator goes from a
 * line to its trace: a worker's line inside the job's attempt span, an API handler's inside the request span.
 */
const exporter = new InMemorySpanExporter();
let provider: NodeTracerProvider | undefined;
const register = () => {
  provider = new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
  provider.register();
};
const unregister = async () => {
  await provider?.shutdown();
  provider = undefined;
  // The files of a worker share the process: the API goes back to its no-op.
  trace.disable();
  context.disable();
  propagation.disable();
};
afterEach(() => exporter.reset());
afterAll(unregister);

const failingJob = () => fakeAgentJob({ id: 'job-log-1', attempts: 3 });

function processorLogging(logger: ReturnType<typeof captureLogs>['logger']) {
  return createAgentProcessor({
    agents: { resolve: () => ({ agent: {} as never, action: { model: 'fast', output: z.object({ score: z.number() }), prompt: async () => ({ user: 'q' }) } as never }), validateInput: (_a, _b, input) => input },
    chain: async () => {
      throw new LlmError('EPROVIDER', 'Gemini API 500: internal', { status: 500 });
    },
    runs: { record: async () => undefined },
    models: { fast: 'gemini-fast', pro: 'gemini-pro' },
    logger,
  });
}

const settle = (p: Promise<unknown>) => p.then(() => undefined, (e: unknown) => e);

describe('log lines and traces, tracing on', () => {
  beforeAll(register);

  it("a line the worker writes while processing a job carries the job attempt span's trace_id and span_id", async () => {
    const logs = captureLogs('info');
    await settle(processorLogging(logs.logger)(failingJob(), 't'));
    const attempt = exporter.getFinishedSpans().find((s) => s.name === 'process RiskAnalyzer:analyze_risks');
    expect(attempt).toBeDefined();
    const line = await vi.waitFor(() => {
      const found = logs.lines().find((l) => l.msg === 'job attempt failed');
      expect(found).toBeDefined();
      return found!;
    });
    expect(line).toMatchObject({ jobId: 'job-log-1', trace_id: attempt!.spanContext().traceId, span_id: attempt!.spanContext().spanId, trace_flags: '01' });
  });

  it("an API handler's line carries the request span's ids; a line outside any span carries none", async () => {
    const logs = captureLogs('info');
    const app = Fastify({ loggerInstance: logs.logger });
    registerHttpTracing(app as never);
    app.get('/hello', async (req) => {
      req.log.info('inside the handler');
      return { ok: true };
    });
    await app.ready();
    try {
      const res = await app.inject({ method: 'GET', url: '/hello' });
      expect(res.statusCode).toBe(200);
    } finally {
      await app.close();
    }
    logs.logger.info('outside any span');
    const server = exporter.getFinishedSpans().find((s) => s.name === 'GET /hello');
    expect(server).toBeDefined();
    const lines = await vi.waitFor(() => {
      const all = logs.lines();
      expect(all.map((l) => l.msg)).toEqual(expect.arrayContaining(['inside the handler', 'outside any span']));
      return all;
    });
    expect(lines.find((l) => l.msg === 'inside the handler')).toMatchObject({ trace_id: server!.spanContext().traceId, span_id: server!.spanContext().spanId });
    expect(Object.keys(lines.find((l) => l.msg === 'outside any span')!)).not.toContain('trace_id');
  });

  it("the API's request lines, incoming and completed, carry the request span's ids; a request fastify answers without hooks still logs its incoming line", async () => {
    const logs = captureLogs('debug');
    const app = await buildBareApp({
      logger: logs.logger,
      tracing: true,
      plugins: [(a) => void a.get('/v1/hello', { config: { access: { role: 'public' } } }, async () => ({ ok: true }))],
    });
    await app.ready();
    try {
      expect((await app.inject({ method: 'GET', url: '/v1/hello', headers: { 'x-request-id': 'req-traced' } })).statusCode).toBe(200);
      // A badly encoded URL: answered by frameworkErrors, before any hook (and so without a span).
      expect((await app.inject({ method: 'GET', url: '/v1/%zz', headers: { 'x-request-id': 'req-bad-url' } })).statusCode).toBe(400);
    } finally {
      await app.close();
    }
    const server = exporter.getFinishedSpans().find((s) => s.name === 'GET /v1/hello');
    expect(server).toBeDefined();
    const ids = { trace_id: server!.spanContext().traceId, span_id: server!.spanContext().spanId };
    const lines = await vi.waitFor(() => {
      const mine = logs.lines().filter((l) => l.requestId === 'req-traced');
      expect(mine.map((l) => l.msg)).toEqual(expect.arrayContaining(['incoming request', 'request completed']));
      return mine;
    });
    for (const msg of ['incoming request', 'request completed']) {
      const found = lines.filter((l) => l.msg === msg);
      expect(found, msg).toHaveLength(1);
      expect(found[0], msg).toMatchObject(ids);
    }
    expect(logs.lines().filter((l) => l.requestId === 'req-bad-url' && l.msg === 'incoming request')).toHaveLength(1);
  });
});

describe('log lines, tracing unset', () => {
  beforeAll(unregister);

  it('carry no trace fields, inside a job attempt too', async () => {
    const logs = captureLogs('info');
    await settle(processorLogging(logs.logger)(failingJob(), 't'));
    const line = await vi.waitFor(() => {
      const found = logs.lines().find((l) => l.msg === 'job attempt failed');
      expect(found).toBeDefined();
      return found!;
    });
    expect(Object.keys(line).filter((k) => k.startsWith('trace_') || k === 'span_id')).toEqual([]);
  });
});
