import type { RedisClient } from '../src/shared/infra/redis/connection.js';
import { randomUUID } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { cancelRequestedKey } from '../src/shared/core/queue-keys.js';
import { until, waitsTimeout, POLL } from './helpers/wait.js';
import { createDlqStore } from '../src/shared/ops/dlq-store.js';
import { createDlqService } from '../src/shared/ops/dlq-service.js';
import { createDlqReprocessor } from '../src/workers/ops/dlq-reprocessor.js';
import { createLogger } from '../src/shared/core/logger.js';
import { createRedis } from '../src/shared/infra/redis/connection.js';
import { encodeReason } from '../src/shared/core/outcomes.js';
import { randomOrg, redisUrl } from './helpers/env.js';
import { startStack, type Stack } from './helpers/stack.js';
import { failJobs } from './helpers/ops.js';
import { readSseBody } from './helpers/sse.js';
import type { SseMessage } from '../src/producers/client/sse-parser.js';

const OUTAGE = 'Gemini API 503 UNAVAILABLE: overloaded';

describe('DLQ API', () => {
  let s: Stack;
  let conn: RedisClient;
  const otherOrg = randomOrg();
  let home: { authorization: string };
  let other: { authorization: string };
  let operator: { authorization: string };
  let ids: { a1: string; a2: string; aPoison: string; aDeal: string; b1: string; b2: string };

  beforeAll(async () => {
    s = await startStack({}, { worker: false });
    conn = createRedis(redisUrl(), 'worker');
    // The DLQ is an org-admin's (its own org) and the operator's (every org).
    home = { authorization: `Bearer ${await s.newKey(s.orgId, 'org-admin')}` };
    other = { authorization: `Bearer ${await s.newKey(otherOrg, 'org-admin')}` };
    operator = { authorization: `Bearer ${await s.operatorKey()}` };
    const jobs = await failJobs(s.runtime.queue, conn, s.cfg.QUEUE_PREFIX, [
      { data: { orgId: s.orgId }, reason: OUTAGE },
      { data: { orgId: otherOrg }, reason: OUTAGE },
      { data: { orgId: s.orgId }, reason: encodeReason('EBADREQUEST', 'Gemini API 400 INVALID_ARGUMENT: nope'), unrecoverable: true },
      { data: { orgId: s.orgId }, reason: OUTAGE },
      { data: { orgId: otherOrg }, reason: OUTAGE },
      { data: { orgId: s.orgId, agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: 's-1' } }, reason: OUTAGE },
    ]);
    ids = { a1: jobs[0].id!, b1: jobs[1].id!, aPoison: jobs[2].id!, a2: jobs[3].id!, b2: jobs[4].id!, aDeal: jobs[5].id! };
  });
  afterAll(async () => {
    conn?.disconnect();
    await s?.close();
  });

  const get = (url: string, headers = home) => s.app.inject({ method: 'GET', url, headers });
  const markerSet = (id: string) => s.runtime.deps.redis.exists(cancelRequestedKey(s.cfg.QUEUE_PREFIX, id));
  const idsOf = (res: { json(): any }) => res.json().entries.map((e: { id: string }) => e.id);

  it('clears a cancel marker left beside an entry when it is retried or deleted', async () => {
    // First, while nothing waits in the queue (failJobs takes what waits) and before the listings below.
    // What a cancel racing the run's end leaves: the job failed, its marker still set.
    const [retried, deleted] = await failJobs(s.runtime.queue, conn, s.cfg.QUEUE_PREFIX, [
      { data: { orgId: s.orgId }, reason: 'cancelled', unrecoverable: true },
      { data: { orgId: s.orgId }, reason: 'cancelled', unrecoverable: true },
    ]);
    for (const j of [retried, deleted]) await s.runtime.deps.redis.set(cancelRequestedKey(s.cfg.QUEUE_PREFIX, j.id!), '1', 'EX', 600);
    expect((await s.app.inject({ method: 'POST', url: `/v1/dlq/${retried.id}/retry`, headers: home, payload: {} })).statusCode).toBe(202);
    expect(await markerSet(retried.id!)).toBe(0);
    expect((await s.app.inject({ method: 'DELETE', url: `/v1/dlq/${deleted.id}`, headers: home })).statusCode).toBe(204);
    expect(await markerSet(deleted.id!)).toBe(0);
  });

  it('needs an org-admin key (or the operator)', async () => {
    expect((await s.app.inject({ method: 'GET', url: '/v1/dlq' })).statusCode).toBe(401);
    expect((await get('/v1/dlq', s.auth)).statusCode).toBe(403);
    expect((await get(`/v1/dlq/${ids.a1}`, s.auth)).statusCode).toBe(403);
  });

  it("lists only the caller's org, oldest first, with class and DLQ counters", async () => {
    const res = await get('/v1/dlq');
    expect(res.statusCode).toBe(200);
    expect(idsOf(res)).toEqual([ids.a1, ids.aPoison, ids.a2, ids.aDeal]);
    const first = res.json().entries[0];
    expect(first).toMatchObject({ id: ids.a1, orgId: s.orgId, agent: 'RiskAnalyzer', action: 'analyze_risks', class: 'retryable', reason: OUTAGE, dlqRetries: 0 });
    expect(Date.parse(first.failedAt)).toBeGreaterThan(0);
  });

  it('pages with a cursor and filters by agent and class', async () => {
    const page1 = await get('/v1/dlq?limit=2');
    expect(idsOf(page1)).toEqual([ids.a1, ids.aPoison]);
    const cursor = page1.json().nextCursor;
    expect(typeof cursor).toBe('string');
    const page2 = await get(`/v1/dlq?limit=2&cursor=${cursor}`);
    expect(idsOf(page2)).toEqual([ids.a2, ids.aDeal]);
    const rest = page2.json().nextCursor ? idsOf(await get(`/v1/dlq?limit=2&cursor=${page2.json().nextCursor}`)) : [];
    expect(rest).toEqual([]);

    expect(idsOf(await get('/v1/dlq?class=poison'))).toEqual([ids.aPoison]);
    expect(idsOf(await get('/v1/dlq?agent=DealScorer'))).toEqual([ids.aDeal]);
    expect(idsOf(await get('/v1/dlq?agent=RiskAnalyzer&class=retryable'))).toEqual([ids.a1, ids.a2]);
  });

  it('answers 400 naming the bad parameter', async () => {
    const badClass = await get('/v1/dlq?class=broken');
    expect(badClass.statusCode).toBe(400);
    expect(badClass.json().details[0].path).toBe('query.class');
    expect((await get('/v1/dlq?limit=0')).json().details[0].path).toBe('query.limit');
    expect((await get('/v1/dlq?cursor=bm9wZQ')).json().details[0].path).toBe('query.cursor');
    const bulk = await s.app.inject({ method: 'POST', url: '/v1/dlq/retry', headers: home, payload: { class: 'everything' } });
    expect(bulk.statusCode).toBe(400);
    expect(bulk.json().details[0].path).toBe('class');
  });

  it("answers 404 for another org's entry, whatever the verb", async () => {
    expect((await get(`/v1/dlq/${ids.a1}`, other)).statusCode).toBe(404);
    expect((await s.app.inject({ method: 'POST', url: `/v1/dlq/${ids.a1}/retry`, headers: other, payload: {} })).statusCode).toBe(404);
    expect((await s.app.inject({ method: 'DELETE', url: `/v1/dlq/${ids.a1}`, headers: other })).statusCode).toBe(404);
    expect(await s.runtime.queue.getJobState(ids.a1)).toBe('failed');
    expect((await get(`/v1/dlq/${ids.b1}`, other)).json()).toMatchObject({ id: ids.b1, orgId: otherOrg });
  });

  it('shows the operator every org', async () => {
    const res = await get('/v1/dlq', operator);
    expect(new Set(idsOf(res))).toEqual(new Set(Object.values(ids)));
    expect((await get(`/v1/dlq/${ids.b2}`, operator)).statusCode).toBe(200);
  });

  it('bulk-retries by filter within the org only', async () => {
    const res = await s.app.inject({ method: 'POST', url: '/v1/dlq/retry', headers: home, payload: { agent: 'RiskAnalyzer', class: 'retryable' } });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({ retried: 2, more: false });
    expect(await s.runtime.queue.getJobState(ids.a1)).toBe('waiting');
    expect(await s.runtime.queue.getJobState(ids.a2)).toBe('waiting');
    for (const id of [ids.aPoison, ids.aDeal, ids.b1, ids.b2]) expect(await s.runtime.queue.getJobState(id)).toBe('failed');
    expect(idsOf(await get('/v1/dlq'))).toEqual([ids.aPoison, ids.aDeal]);
    expect(await s.runtime.deps.redis.hget(`${s.cfg.QUEUE_PREFIX}:agentq:dlq:${ids.a1}`, 'retries')).toBe('1');
  });

  it('retries one entry by id, and a second retry of a moved entry is 404', async () => {
    const res = await s.app.inject({ method: 'POST', url: `/v1/dlq/${ids.b1}/retry`, headers: other, payload: {} });
    expect(res.statusCode).toBe(202);
    expect(res.json()).toMatchObject({ id: ids.b1, state: 'waiting', dlqRetries: 1 });
    expect(await s.runtime.queue.getJobState(ids.b1)).toBe('waiting');
    expect((await s.app.inject({ method: 'POST', url: `/v1/dlq/${ids.b1}/retry`, headers: other, payload: {} })).statusCode).toBe(404);
  });

  it('deletes an entry', async () => {
    const res = await s.app.inject({ method: 'DELETE', url: `/v1/dlq/${ids.aPoison}`, headers: home });
    expect(res.statusCode).toBe(204);
    expect(await s.runtime.queue.getJob(ids.aPoison)).toBeUndefined();
    expect((await get(`/v1/dlq/${ids.aPoison}`)).statusCode).toBe(404);
  });
});

describe('DLQ retries with a worker', () => {
  let s: Stack;
  let admin: { authorization: string };
  beforeAll(async () => {
    s = await startStack({ JOB_ATTEMPTS: '3' }, { worker: true });
    admin = { authorization: `Bearer ${await s.newKey(s.orgId, 'org-admin')}` };
  });
  afterEach(() => s.emulator.clearFaults());
  afterAll(async () => s?.close());

  const job = (id: string, waitMs = 0) => s.app.inject({ method: 'GET', url: `/v1/jobs/${id}${waitMs ? `?waitMs=${waitMs}` : ''}`, headers: s.auth }).then((r) => r.json());
  const modelCalls = () => s.emulator.calls().filter((c) => c.kind === 'generate' || c.kind === 'stream').length;
  const marker = (id: string) => s.runtime.deps.redis.exists(cancelRequestedKey(s.cfg.QUEUE_PREFIX, id));

  it('refuses (409, naming why) to replay a pipeline step or fan-out child whose run or flow has finished, alone, in bulk or on schedule', async () => {
    // One attempt each (JOB_ATTEMPTS 3 would retry the 503 away): the step and the child fail for good.
    const name = `Replay ${randomUUID().slice(0, 8)}`;
    s.emulator.script({ status: 400, message: 'scripted bad request', match: { promptIncludes: name }, times: -1 });
    const run = (await s.app.inject({ method: 'POST', url: '/v1/pipelines/wizard_completion', headers: s.auth, payload: { input: { companyName: name, answers: [{ question: 'What?', answer: 'Robots.' }] } } })).json();
    expect((await s.app.inject({ method: 'GET', url: `/v1/pipelines/runs/${run.id}?waitMs=20000`, headers: s.auth })).json().state).toBe('failed');
    const task = { agent: 'RiskAnalyzer', action: 'analyze_risks', input: { startup: { name, industry: 'robotics', stage: 'seed', description: 'fan' } } };
    const flow = (await s.app.inject({ method: 'POST', url: '/v1/flows/parallel', headers: s.auth, payload: { tasks: [task] } })).json();
    const settled = (await s.app.inject({ method: 'GET', url: `/v1/flows/${flow.id}?waitMs=20000`, headers: s.auth })).json();
    expect(settled.state).toBe('completed');
    const steps = [`${run.id}-profile`, settled.children[0].id as string];
    for (const id of steps) await until(`the entry of ${id}`, async () => (await s.app.inject({ method: 'GET', url: `/v1/dlq/${id}`, headers: admin })).statusCode === 200);
    s.emulator.clearFaults();
    const calls = modelCalls();

    for (const [id, parentId] of [[steps[0], run.id], [steps[1], flow.id]]) {
      const res = await s.app.inject({ method: 'POST', url: `/v1/dlq/${id}/retry`, headers: admin, payload: {} });
      expect(res.statusCode).toBe(409);
      expect(res.json()).toMatchObject({ reason: 'parent_finished', parentId });
    }
    expect((await s.app.inject({ method: 'POST', url: '/v1/dlq/retry', headers: admin, payload: {} })).json()).toMatchObject({ retried: 0 });
    const cell = s.runtime.deps.cells[0];
    const store = createDlqStore({ redis: s.runtime.deps.redis, queue: cell.queue, prefix: cell.prefix, ttlS: 3600 });
    const reprocessor = createDlqReprocessor({
      store,
      service: createDlqService({ store, validateInput: (_a, _b, input) => input }),
      blocked: async () => false,
      maxRetries: 3,
      batch: 10,
      logger: createLogger({ level: 'silent' }),
    });
    // Poison entries are not the reprocessor's: the class is forced to retryable, as an outage would leave it.
    for (const id of steps) await s.runtime.deps.redis.hset(store.metaKey(id), 'class', 'retryable');
    expect(await reprocessor.run()).toMatchObject({ retried: 0, skippedParentFinished: 2 });
    for (const id of steps) expect(await cell.queue.getJobState(id)).toBe('failed');
    expect(modelCalls()).toBe(calls);
  });

  it('runs a job cancelled while running again when its entry is retried: the cancel was of the run that ended', async () => {
    const name = `Cancel Then Retry ${randomUUID().slice(0, 8)}`;
    s.emulator.script({ hang: true, match: { promptIncludes: name }, times: 1 });
    const input = { startup: { name, industry: 'robotics', stage: 'seed', description: 'cancelled, then retried' } };
    const { id } = (await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: { agent: 'RiskAnalyzer', action: 'analyze_risks', input } })).json();
    await until('the hanging model call', () => s.emulator.calls().some((c) => c.fault === 'hang'));
    expect((await s.app.inject({ method: 'DELETE', url: `/v1/jobs/${id}`, headers: s.auth })).statusCode).toBe(202);
    expect(await job(id, 10_000)).toMatchObject({ state: 'cancelled', attempts: 1 });
    // The run it cancelled is over: its marker goes with it.
    await until('the cancel marker cleared', async () => (await marker(id)) === 0);
    await until('the cancelled entry', async () => (await s.app.inject({ method: 'GET', url: `/v1/dlq/${id}`, headers: admin })).json().class === 'cancelled');

    const calls = modelCalls();
    const retry = await s.app.inject({ method: 'POST', url: `/v1/dlq/${id}/retry`, headers: admin, payload: {} });
    expect(retry.statusCode).toBe(202);
    expect(await job(id, 20_000)).toMatchObject({ state: 'completed', attempts: 2 });
    expect(modelCalls()).toBe(calls + 1);
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout));

  it("a streaming job retried from the DLQ streams its new run, not the failure that ended the last one", async () => {
    const name = `Stream Retry ${randomUUID().slice(0, 8)}`;
    s.emulator.script({ status: 400, message: 'scripted bad request', match: { promptIncludes: name }, times: -1 });
    const input = { startup: { name, industry: 'robotics', stage: 'seed', description: 'streams, fails, is retried' } };
    const { id } = (await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: { agent: 'RiskAnalyzer', action: 'analyze_risks', input, options: { stream: true } } })).json();
    expect(await job(id, 20_000)).toMatchObject({ state: 'failed' });
    await until('the entry', async () => (await s.app.inject({ method: 'GET', url: `/v1/dlq/${id}`, headers: admin })).statusCode === 200);
    s.emulator.clearFaults();
    expect((await s.app.inject({ method: 'POST', url: `/v1/dlq/${id}/retry`, headers: admin, payload: {} })).statusCode).toBe(202);
    const base = s.app.server.listening ? `http://127.0.0.1:${(s.app.server.address() as { port: number }).port}` : await s.app.listen({ port: 0, host: '127.0.0.1' });
    const res = await fetch(`${base}/v1/jobs/${id}/stream`, { headers: s.auth });
    expect(res.status).toBe(200);
    const messages: SseMessage[] = [];
    await readSseBody(res, messages);
    expect(messages.at(-1)?.data).toBe('[DONE]');
    const final = JSON.parse(messages.at(-2)!.data);
    expect(final).toMatchObject({ result: { success: true } });
  });
});
