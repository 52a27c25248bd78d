import { randomBytes } from 'node:crypto';
import { context, propagation, trace } from '@opentelemetry/api';
import { InMemorySpanExporter, NodeTracerProvider, SimpleSpanProcessor, type ReadableSpan } from '@opentelemetry/sdk-trace-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { batchKeys } from '../src/shared/core/queue-keys.js';
import { QUEUE } from '../src/shared/core/queue-names.js';
import type { RedisClient } from '../src/shared/infra/redis/connection.js';
import { createRedis } from '../src/shared/infra/redis/connection.js';
import { createDlqStore } from '../src/shared/ops/dlq-store.js';
import { createAgentQueue } from '../src/shared/queue/agent-queue.js';
import { tracer } from '../src/shared/telemetry/tracing.js';
import { randomPrefix, redisUrl } from './helpers/env.js';
import { failJobs, marker, riskJob } from './helpers/ops.js';
import { startStack, type Stack } from './helpers/stack.js';
import { until, waitsTimeout, POLL } from './helpers/wait.js';

/**
 * A DLQ retry asked over the API continues the request's trace into the retried job, as an enqueue does: the
 * retried attempts are children of the retry request's span, not of the failed run's enqueue. Spans go to an
 * in-memory exporter this file registers (the stack is told an endpoint only so that its API opens request spans).
 */
const SERVER = 1;
const exporter = new InMemorySpanExporter();
const provider = new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
const OUTAGE = 'Gemini API 503 UNAVAILABLE: overloaded';
const ADMIN_TOKEN = 'dlq-tracing-admin-5b1e93c0d2';
/** The context the failed run was enqueued under: another trace than the retry's. */
const original = { traceparent: `00-${randomBytes(16).toString('hex')}-${randomBytes(8).toString('hex')}-01` };

let s: Stack;
let conn: RedisClient;
/** Dead-lettered before the tests (and the worker) start, so the worker takes none of them from failJobs. */
let failed: { api: string; board: string };
beforeAll(async () => {
  provider.register();
  s = await startStack({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:9', ADMIN_TOKEN }, { worker: false });
  conn = createRedis(redisUrl(), 'worker');
  const spec = () => ({ data: { orgId: s.orgId, input: riskJob(marker()).input, trace: original }, reason: OUTAGE });
  const [api, board] = await failJobs(s.runtime.queue, conn, s.cfg.QUEUE_PREFIX, [spec(), spec()]);
  failed = { api: api.id!, board: board.id! };
});
afterAll(async () => {
  conn?.disconnect();
  await s?.close();
  await provider.shutdown();
  // The files of a worker share the process: the API goes back to its no-op.
  trace.disable();
  context.disable();
  propagation.disable();
});

/** The request's SERVER span, once it ended (at the response's end, which may come after the reply is read). */
const serverSpan = (what: string, pred: (sp: ReadableSpan) => boolean) => until(what, async () => exporter.getFinishedSpans().find((sp) => sp.kind === SERVER && pred(sp)));

describe('a DLQ retry over the API, tracing on', () => {
  it("from Bull Board writes the board request's context into the job", async () => {
    const url = `/admin/queues/api/queues/${QUEUE.agent}/${failed.board}/retry`;
    const res = await s.app.inject({ method: 'PUT', url, headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    expect(res.statusCode, res.body).toBe(204);
    const request = await serverSpan('the board request span', (sp) => sp.attributes['url.path'] === url);
    const { traceId, spanId } = request.spanContext();
    expect((await s.runtime.queue.getJob(failed.board))!.data.trace?.traceparent).toBe(`00-${traceId}-${spanId}-01`);
  });

  it("puts the retried job's attempts in the retry request's trace, children of its span", async () => {
    const id = failed.api;
    const admin = { authorization: `Bearer ${await s.newKey(s.orgId, 'org-admin')}` };
    const res = await s.app.inject({ method: 'POST', url: `/v1/dlq/${id}/retry`, headers: admin, payload: {} });
    expect(res.statusCode, res.body).toBe(202);
    const request = await serverSpan('the retry request span', (sp) => sp.attributes['http.route'] === '/v1/dlq/:id/retry');

    await s.startWorker();
    const attempts = await until('the retried job completed', async () => {
      const mine = exporter.getFinishedSpans().filter((sp) => sp.name.startsWith('process ') && sp.attributes['agentq.job.id'] === id);
      return mine.some((sp) => sp.attributes['agentq.outcome'] === 'completed') ? mine : undefined;
    });
    const traceOf = (sp: ReadableSpan) => sp.spanContext().traceId;
    expect(attempts.map(traceOf)).toEqual(attempts.map(() => traceOf(request)));
    expect(attempts.map((sp) => sp.parentSpanContext?.spanId)).toEqual(attempts.map(() => request.spanContext().spanId));
    // The model call of the attempt that answered is in it too.
    const answered = attempts.find((sp) => sp.attributes['agentq.outcome'] === 'completed')!;
    const calls = exporter.getFinishedSpans().filter((sp) => sp.parentSpanContext?.spanId === answered.spanContext().spanId && sp.attributes['gen_ai.operation.name']);
    expect(calls.map(traceOf)).toEqual([traceOf(request)]);
  }, waitsTimeout(POLL.timeout, POLL.timeout));
});

describe('the DLQ store', () => {
  /** One failed job, enqueued under `original`, on a queue of its own that no worker runs. */
  async function failedJob() {
    const prefix = randomPrefix();
    const queue = createAgentQueue({ connection: conn, prefix, retention: { attempts: 1, keepCompletedCount: 10, keepCompletedAgeS: 60, keepFailedCount: 10, keepFailedAgeS: 60 } });
    const store = createDlqStore({ redis: conn, queue, prefix, ttlS: 60 });
    const [job] = await failJobs(queue, conn, prefix, [{ data: { orgId: s.orgId, trace: original }, reason: OUTAGE }]);
    return { prefix, queue, store, job };
  }

  it('keeps the trace a job had when nothing traced asks for its retry (the scheduled reprocessor)', async () => {
    const { queue, store, job } = await failedJob();
    try {
      expect(await store.retry((await store.get(job.id!))!, {})).toBe(1);
      expect((await queue.getJob(job.id!))!.data.trace).toEqual(original);
    } finally {
      await queue.close();
    }
  });

  it("a traced retry without new input writes only the trace: the job's input and its batch-tier record stay", async () => {
    const { prefix, queue, store, job } = await failedJob();
    try {
      const record = batchKeys(prefix).job(job.id!);
      // An answer its batch stored for this input, not read yet: the retry runs the same input and may use it.
      await conn.hset(record, { state: 'done', result: '{}' });
      const span = tracer().startSpan('POST /v1/dlq/:id/retry');
      const res = await context.with(trace.setSpan(context.active(), span), async () => store.retry((await store.get(job.id!))!, {}));
      span.end();
      expect(res).toBe(1);
      const after = (await queue.getJob(job.id!))!.data;
      expect(after.trace?.traceparent).toBe(`00-${span.spanContext().traceId}-${span.spanContext().spanId}-01`);
      expect(after.input).toEqual(job.data.input);
      expect(await conn.hget(record, 'state')).toBe('done');
    } finally {
      await queue.close();
    }
  });
});
