import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTracing, type Tracing } from '../src/app/tracing.js';
import { parseProm, marker, riskJob, sampleSum } from './helpers/ops.js';
import { randomPrefix } from './helpers/env.js';
import { startOtlpReceiver, type OtlpReceiver, type ReceivedSpan } from './helpers/otlp-receiver.js';
import { startStack, type Stack } from './helpers/stack.js';
import { until, waitsTimeout, POLL } from './helpers/wait.js';
import { QUEUE } from '../src/shared/core/queue-names.js';

const ADMIN_TOKEN = 'adm-tracing-3c9d2e71';
const SERVER = 2;
const CLIENT = 3;
const PRODUCER = 4;
const CONSUMER = 5;

/**
 * The API and the worker are two runtimes (as two processes would be) on one queue prefix: the only way a
 * worker span can join the client's trace is the context carried inside the job.
 */
describe('OpenTelemetry traces (OTLP/HTTP to a loopback receiver)', () => {
  let receiver: OtlpReceiver;
  let api: Stack;
  let worker: Stack;
  let tracing: Tracing;

  beforeAll(async () => {
    receiver = await startOtlpReceiver();
    const env = { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint, QUEUE_PREFIX: randomPrefix(), ADMIN_TOKEN, OTEL_SERVICE_NAME: 'agentq-test' };
    api = await startStack(env);
    worker = await startStack(env, { worker: true });
    tracing = startTracing(api.cfg, api.logger)!;
  });
  afterAll(async () => {
    await tracing?.shutdown();
    await worker?.close();
    await api?.close();
    await receiver?.close();
  });

  const traceparent = () => ({ traceId: randomBytes(16).toString('hex'), spanId: randomBytes(8).toString('hex') });
  const post = async (url: string, payload: unknown, tp?: { traceId: string; spanId: string }) => {
    const res = await api.app.inject({ method: 'POST', url, headers: { ...api.auth, ...(tp ? { traceparent: `00-${tp.traceId}-${tp.spanId}-01` } : {}) }, payload: payload as object });
    expect(res.statusCode, res.body).toBe(202);
    return res.json().id as string;
  };
  const result = async (id: string) => (await api.app.inject({ method: 'GET', url: `/v1/jobs/${id}?waitMs=20000`, headers: api.auth })).json();
  /** Flushes this process's exporter until the trace has what `ready` needs. */
  const spansOf = (traceId: string, what: string, ready: (spans: ReceivedSpan[]) => boolean) =>
    until(what, async () => {
      await tracing.flush();
      const spans = receiver.inTrace(traceId);
      return ready(spans) ? spans : undefined;
    });
  const one = (spans: ReceivedSpan[], pred: (s: ReceivedSpan) => boolean, what: string) => {
    const found = spans.filter(pred);
    expect(found, what).toHaveLength(1);
    return found[0];
  };
  const eventsOf = (s: ReceivedSpan, name: string) => s.events.filter((e) => e.name === name);

  it('links the client traceparent to the worker model call, across runtimes and retries, with GenAI attributes and no prompt text', async () => {
    const client = traceparent();
    const m = marker();
    // The first model call answers 500: a retryable failure, so the job runs twice under one trace.
    worker.emulator.script({ status: 500, match: { promptIncludes: m } });
    const id = await post('/v1/jobs', riskJob(m), client);
    const done = await result(id);
    expect(done.state).toBe('completed');

    const spans = await spansOf(client.traceId, 'an errored and an answered model call', (ss) => ss.filter((s) => s.attributes['gen_ai.operation.name']).length === 2 && ss.filter((s) => s.kind === CONSUMER).length === 2);

    // Spans per job: HTTP request, enqueue, and per attempt the attempt and its model call.
    expect(spans.map((s) => s.name).sort()).toEqual(['POST /v1/jobs', `send ${QUEUE.agent}`, ...Array(2).fill(`generate_content ${done.result.model}`), ...Array(2).fill('process RiskAnalyzer:analyze_risks')].sort());
    const http = one(spans, (s) => s.kind === SERVER, 'one HTTP span');
    expect(http).toMatchObject({ name: 'POST /v1/jobs', parentSpanId: client.spanId });
    expect(http.attributes).toMatchObject({ 'http.request.method': 'POST', 'http.route': '/v1/jobs', 'http.response.status_code': 202, 'agentq.org_id': api.orgId });
    expect(http.resource['service.name']).toBe('agentq-test');

    const enqueue = one(spans, (s) => s.kind === PRODUCER, 'one enqueue span');
    expect(enqueue.parentSpanId).toBe(http.spanId);
    expect(enqueue.attributes).toMatchObject({ 'messaging.system': 'bullmq', 'messaging.operation.type': 'send', 'agentq.job.id': id, 'agentq.org_id': api.orgId });

    const attempts = spans.filter((s) => s.kind === CONSUMER).sort((a, b) => Number(a.attributes['agentq.attempt']) - Number(b.attributes['agentq.attempt']));
    expect(attempts.map((a) => a.parentSpanId)).toEqual([enqueue.spanId, enqueue.spanId]);
    expect(attempts.map((a) => [a.attributes['agentq.attempt'], a.attributes['agentq.outcome'], a.attributes['agentq.job.id']])).toEqual([
      [1, 'retry', id],
      [2, 'completed', id],
    ]);
    expect(attempts[0].status?.code).toBe(2);
    expect(attempts[0].attributes['error.type']).toBe('EPROVIDER');
    expect(attempts[0].attributes['agentq.queue_wait_ms']).toBeGreaterThanOrEqual(0);
    for (const a of attempts) {
      expect(eventsOf(a, 'agentq.guard.fair_gate')[0]?.attributes).toEqual({ 'agentq.fair.decision': 'run' });
      expect(eventsOf(a, 'agentq.guard.result_cache')[0]?.attributes).toEqual({ 'agentq.cache.hit': 'miss' });
      expect(eventsOf(a, 'agentq.guard.quota')[0]?.attributes).toEqual({ 'agentq.quota.allowed': true });
      expect(eventsOf(a, 'agentq.guard.rate_limit')[0]?.attributes['agentq.rate_limit.decision']).toBe('prepaid');
      expect(eventsOf(a, 'agentq.guard.breaker')[0]?.attributes).toMatchObject({ 'agentq.breaker.allowed': true, 'agentq.breaker.state': 'closed' });
    }

    const calls = spans.filter((s) => s.attributes['gen_ai.operation.name']);
    expect(calls.map((c) => c.parentSpanId).sort()).toEqual(attempts.map((a) => a.spanId).sort());
    const failed = one(calls, (c) => c.parentSpanId === attempts[0].spanId, 'the failed call');
    expect(failed.status?.code).toBe(2);
    expect(failed.attributes['error.type']).toBe('EPROVIDER');
    const answered = one(calls, (c) => c.parentSpanId === attempts[1].spanId, 'the answered call');
    expect(answered.kind).toBe(CLIENT);
    expect(answered.name).toBe(`generate_content ${done.result.model}`);
    expect(answered.attributes).toMatchObject({
      'gen_ai.operation.name': 'generate_content',
      'gen_ai.provider.name': 'gcp.gemini',
      'gen_ai.system': 'gcp.gemini',
      'gen_ai.request.model': done.result.model,
      'gen_ai.response.model': done.result.model,
      'gen_ai.usage.input_tokens': done.result.tokensUsed.input,
      'gen_ai.usage.output_tokens': done.result.tokensUsed.output,
      'agentq.org_id': api.orgId,
      'agentq.job.id': id,
    });
    expect(answered.attributes['agentq.cost_usd']).toBeCloseTo(done.result.costUsd, 12);
    expect(done.result.tokensUsed.input).toBeGreaterThan(0);

    // Content capture is off by default: neither the input (it carries the marker) nor the answer was exported.
    expect(Object.keys(answered.attributes).filter((k) => k.startsWith('gen_ai.input') || k.startsWith('gen_ai.output.messages') || k === 'gen_ai.system_instructions')).toEqual([]);
    const exported = receiver.bodies.join('\n');
    expect(exported).not.toContain(m);
    expect(exported).not.toContain(JSON.stringify(done.result.data).slice(1, 40));
  });

  it('records a cache hit as an event of the attempt, with no model call span', async () => {
    const m = marker();
    expect((await result(await post('/v1/jobs', riskJob(m)))).state).toBe('completed');
    const client = traceparent();
    const again = await result(await post('/v1/jobs', riskJob(m), client));
    expect(again.result.cacheHit).toMatch(/^l[12]$/);
    const spans = await spansOf(client.traceId, 'the attempt of the cached job', (ss) => ss.some((s) => s.kind === CONSUMER));
    // A hit is three spans: the request, the enqueue and the attempt (no model call).
    expect(spans.map((s) => s.kind).sort()).toEqual([SERVER, PRODUCER, CONSUMER].sort());
    const attempt = one(spans, (s) => s.kind === CONSUMER, 'one attempt');
    expect(eventsOf(attempt, 'agentq.guard.result_cache')[0]?.attributes).toEqual({ 'agentq.cache.hit': again.result.cacheHit });
    expect(spans.filter((s) => s.attributes['gen_ai.operation.name'])).toEqual([]);
  });

  it('keeps a pipeline run and a fan-out flow in the request trace: every step and child job is a child of an enqueue in it', async () => {
    const client = traceparent();
    const runId = await post('/v1/pipelines/wizard_completion', {
      input: { companyName: `Acme ${marker()}`, answers: [{ question: 'What do you build?', answer: 'Warehouse picking robots.' }] },
    }, client);
    const run = (await api.app.inject({ method: 'GET', url: `/v1/pipelines/runs/${runId}?waitMs=30000`, headers: api.auth })).json();
    expect(run.state).toBe('completed');
    const steps = run.steps.length as number;
    const spans = await spansOf(client.traceId, 'every step\'s model call', (ss) => ss.filter((s) => s.attributes['gen_ai.operation.name']).length === steps);
    const http = one(spans, (s) => s.kind === SERVER, 'the request');
    const enqueues = spans.filter((s) => s.kind === PRODUCER);
    expect(enqueues).toHaveLength(steps);
    // The run job carries the request's context: each step's enqueue (made by the flows worker) is a child of the request.
    expect(enqueues.every((e) => e.parentSpanId === http.spanId)).toBe(true);
    const attempts = spans.filter((s) => s.kind === CONSUMER);
    expect(new Set(attempts.map((a) => a.parentSpanId))).toEqual(new Set(enqueues.map((e) => e.spanId)));

    const flowTrace = traceparent();
    const flowId = await post('/v1/flows/parallel', { tasks: [riskJob(marker()), riskJob(marker())] }, flowTrace);
    const flow = (await api.app.inject({ method: 'GET', url: `/v1/flows/${flowId}?waitMs=30000`, headers: api.auth })).json();
    expect(flow.state).toBe('completed');
    const fs = await spansOf(flowTrace.traceId, 'both children\'s model calls', (ss) => ss.filter((s) => s.attributes['gen_ai.operation.name']).length === 2);
    const fanOut = one(fs, (s) => s.kind === PRODUCER, 'one enqueue for the flow');
    expect(fanOut.attributes['messaging.batch.message_count']).toBe(2);
    expect(fs.filter((s) => s.kind === CONSUMER).map((a) => a.parentSpanId)).toEqual([fanOut.spanId, fanOut.spanId]);
  }, waitsTimeout(POLL.timeout, POLL.timeout));

  it('GET /metrics: Node defaults per process, model call latency and errors per model and status, per-org depth, usage write lag', async () => {
    // The worker runtime's own registry is live in its process; the API's scrape of it would wait for the exchange.
    const scrape = async () => parseProm((await worker.app.inject({ method: 'GET', url: '/metrics', headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).body);
    const m = marker();
    worker.emulator.script({ status: 503, match: { promptIncludes: m } });
    expect((await result(await post('/v1/jobs', riskJob(m)))).state).toBe('completed');
    const samples = await until('a GC to have been observed', async () => {
      // Young-generation garbage, so a scavenge happens and the GC histogram has a sample.
      for (let i = 0; i < 50; i++) new Array(100_000).fill({ i });
      const s = await scrape();
      return sampleSum(s, 'nodejs_gc_duration_seconds_count') > 0 ? s : undefined;
    });
    const proc = worker.runtime.deps.metrics.processId!;
    expect(sampleSum(samples, 'nodejs_heap_size_used_bytes', { process: proc })).toBeGreaterThan(0);
    expect(samples.some((s) => s.name === 'nodejs_eventloop_lag_seconds' && s.labels.process === proc)).toBe(true);
    expect(samples.some((s) => s.name === 'nodejs_eventloop_lag_p99_seconds')).toBe(true);
    const riskModel = samples.find((s) => s.name === 'agentq_model_call_duration_seconds_count' && s.labels.status === 'ok')?.labels.model;
    expect(riskModel).toBeTruthy();
    expect(sampleSum(samples, 'agentq_model_call_duration_seconds_count', { model: riskModel!, status: 'ok' })).toBeGreaterThan(0);
    expect(sampleSum(samples, 'agentq_model_call_duration_seconds_count', { model: riskModel!, status: 'EPROVIDER' })).toBeGreaterThan(0);
    expect(sampleSum(samples, 'agentq_model_call_errors_total', { model: riskModel!, code: 'EPROVIDER', http_status: '503' })).toBe(1);
    expect(sampleSum(samples, 'agentq_usage_write_lag_seconds_count')).toBeGreaterThan(0);

    // Per-org depth and in flight come from the fair dispatcher at scrape: a job delayed far ahead waits in its lane.
    await post('/v1/jobs', { ...riskJob(marker()), options: { delayMs: 600_000 } });
    // The scrape reuses a dispatcher read for 500 ms, so the new lane shows up on a later one.
    const now = await until('the org\'s waiting job in the scrape', async () => {
      const s = await scrape();
      return sampleSum(s, 'agentq_org_jobs_waiting', { org: api.orgId }) > 0 ? s : undefined;
    });
    expect(sampleSum(now, 'agentq_org_jobs_waiting', { org: api.orgId })).toBe(1);
    expect(now.some((s) => s.name === 'agentq_org_jobs_in_flight')).toBe(true);
  }, waitsTimeout(POLL.timeout, POLL.timeout));
});
