import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBatchApi, type BatchApi } from '../src/shared/infra/llm/batch-api.js';
import { createPricing } from '../src/shared/infra/llm/pricing.js';
import { batchRequestError } from '../src/shared/infra/llm/llm-errors.js';
import { createBatchCollector } from '../src/workers/ops/batch-collector.js';
import { createBatchTier } from '../src/workers/batch-tier.js';
import type { JobContext } from '../src/workers/middleware.js';
import type { GenerateResult } from '../src/shared/infra/llm/llm-client.js';
import { startStack, type Stack } from './helpers/stack.js';
import { usageWritten } from './helpers/usage.js';
import { captureLogs, marker, riskJob, type CapturedLogs } from './helpers/ops.js';
import { duplicateKeys } from './helpers/log-lines.js';
import { POLL, until, waitsTimeout } from './helpers/wait.js';
import { randomOrg } from './helpers/env.js';
import { createStalledCheck } from './helpers/stalled-check.js';
import { encodeRun } from '../src/shared/infra/db/run-stream.js';
import { BULLMQ_STALLED_REASON } from '../src/shared/core/outcomes.js';
import { agentqPrefix, batchKeys, cancelRequestedKey, idempotencyRecordKey } from '../src/shared/core/queue-keys.js';

/**
 * The batch tier end to end: the real SDK's `ai.batches` against the emulator, whose batch clock the test
 * moves (a batch finishes, expires or runs on only when the test says so). Three requests make a batch
 * (BATCH_MAX_REQUESTS=3, age threshold far away), so which jobs share a batch is deterministic.
 */
const BATCH_ENV = {
  BATCH_MAX_REQUESTS: '3',
  BATCH_MAX_AGE_MS: '600000',
  BATCH_POLL_MS: '100',
  TIER_BATCH_MIN_DEADLINE_S: '3600',
  // A job whose batch still runs an hour before its deadline falls back (test 3 uses a deadline of 3602 s)...
  BATCH_DEADLINE_MARGIN_MS: '3600000',
  // ...and a batch needs no time of its own before that margin, so such a deadline is accepted.
  BATCH_MIN_TURNAROUND_S: '0',
};

async function enqueue(s: Stack, marker: string, options: Record<string, unknown>): Promise<string> {
  const res = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: { ...riskJob(marker), options } });
  expect(res.statusCode, res.body).toBe(202);
  return res.json().id as string;
}
const view = async (s: Stack, id: string, waitMs = 0) => (await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}${waitMs ? `?waitMs=${waitMs}` : ''}`, headers: s.auth })).json();
const batchCalls = (s: Stack) => s.emulator.calls().filter((c) => c.kind === 'batch');
const generateCalls = (s: Stack) => s.emulator.calls().filter((c) => c.kind === 'generate');

describe("an inline request's error (google.rpc.Status)", () => {
  it('reads its gRPC code: a refused request is EBADREQUEST, quota and server trouble are retried; an HTTP-like code still reads as HTTP', () => {
    const of = (code: number | undefined) => {
      const e = batchRequestError('m', { code, message: 'x' });
      return [e.code, e.status];
    };
    expect([3, 5, 7, 9, 11, 16].map((c) => of(c)[0])).toEqual(Array(6).fill('EBADREQUEST'));
    expect(of(3)).toEqual(['EBADREQUEST', 400]);
    expect(of(8)).toEqual(['EPROVIDER', 429]);
    expect(of(13)).toEqual(['EPROVIDER', 500]);
    expect(of(14)).toEqual(['EPROVIDER', 503]);
    expect(of(4)).toEqual(['EPROVIDER', 504]);
    expect(of(undefined)[0]).toBe('EPROVIDER');
    expect(of(400)).toEqual(['EBADREQUEST', 400]);
    expect(of(429)).toEqual(['EPROVIDER', 429]);
    expect(of(503)).toEqual(['EPROVIDER', 503]);
    expect(batchRequestError('m', { code: 3, message: 'bad schema' }).message).toBe('Gemini m batch request failed (3 INVALID_ARGUMENT): bad schema');
  });
});

describe('batch tier through ai.batches and the emulator', () => {
  let s: Stack;
  let logs: CapturedLogs;
  beforeAll(async () => {
    logs = captureLogs();
    s = await startStack(BATCH_ENV, { worker: true, logger: logs.logger });
  });
  afterAll(async () => s?.close());

  it('collects batch-tier jobs into one batch, shows waiting_for_batch, and completes them at the batch price', async () => {
    s.emulator.resetCalls();
    s.emulator.setBatchTiming({ pendingMs: 0, runMs: 60_000, expireMs: 48 * 3600_000 });
    const ids = [await enqueue(s, 'b1', { tier: 'batch' }), await enqueue(s, 'b2', { tier: 'batch' }), await enqueue(s, 'b3', { deadline: 7200 })];
    expect((await view(s, ids[2])).tier).toBe('batch');

    // Each job waits for the one batch, named in its stage, without a worker slot or an attempt.
    const stages = await until('all three jobs waiting for a submitted batch', async () => {
      const v = await Promise.all(ids.map((id) => view(s, id)));
      return v.every((j) => j.stage.name === 'waiting_for_batch' && j.stage.batch) && v.map((j) => j.stage);
    });
    expect(new Set(stages.map((st) => st.batch)).size).toBe(1);
    expect(stages[0]).toMatchObject({ name: 'waiting_for_batch', batch: expect.stringMatching(/^batches\//), state: expect.stringMatching(/^JOB_STATE_(PENDING|RUNNING)$/) });
    expect(batchCalls(s)).toHaveLength(1);
    expect(batchCalls(s)[0]).toMatchObject({ requests: 3, batch: stages[0].batch });
    expect(generateCalls(s)).toHaveLength(0);

    s.emulator.advanceClock(60_000);
    const done = await Promise.all(ids.map((id) => view(s, id, 20_000)));
    for (const j of done) {
      expect(j.state).toBe('completed');
      expect(j.attempts).toBe(1);
      expect(j.result.tier).toBe('batch');
      expect(j.result.costUsd).toBeGreaterThan(0);
      expect(j.result.costUsd).toBeCloseTo(j.result.standardCostUsd * 0.5, 9);
    }
    expect(generateCalls(s)).toHaveLength(0);

    await usageWritten(s);
    const rows = (await s.infra.db.pool.query('SELECT tier, model, input_tokens, output_tokens, cost_usd, standard_cost_usd FROM agent_runs WHERE job_id = ANY($1)', [ids])).rows;
    expect(rows).toHaveLength(3);
    const pricing = createPricing();
    for (const r of rows) {
      expect(r.tier).toBe('batch');
      const want = pricing.cost(r.model, { input: r.input_tokens, output: r.output_tokens }, 'batch');
      expect(Number(r.cost_usd)).toBeCloseTo(want.costUsd, 9);
      expect(Number(r.cost_usd)).toBeCloseTo(Number(r.standard_cost_usd) / 2, 9);
    }
    // The collector's lines carry its own component once (a child of the batch feature's logger wrote two).
    const submitted = logs.raw().filter((l) => (JSON.parse(l) as { msg?: string }).msg === 'batch submitted');
    expect(submitted.length).toBeGreaterThan(0);
    for (const line of submitted) {
      expect(duplicateKeys(line), line).toEqual([]);
      expect(JSON.parse(line)).toMatchObject({ component: 'batch-collector' });
    }
  }, waitsTimeout(POLL.timeout, POLL.timeout));

  it('a batch answer without a finishReason is no answer: a retryable EPROVIDER billed at the batch price, and the retry runs standard; the batch\'s other answers complete', async () => {
    s.emulator.resetCalls();
    s.emulator.setBatchTiming({ pendingMs: 0, runMs: 60_000, expireMs: 48 * 3600_000 });
    const m = marker();
    // Only this job's inline answer comes without its finishReason (whole otherwise, usage included).
    s.emulator.script({ noFinishReason: true, match: { kind: 'batch', promptIncludes: m } });
    try {
      const ids = [await enqueue(s, m, { tier: 'batch' }), await enqueue(s, 'nf-ok1', { tier: 'batch' }), await enqueue(s, 'nf-ok2', { tier: 'batch' })];
      await until('the batch submitted', () => batchCalls(s).length === 1 && batchCalls(s)[0].status === 200);
      expect(batchCalls(s)[0]).toMatchObject({ requests: 3, fault: 'no-finish-reason' });
      s.emulator.advanceClock(60_000);
      const [unfinished, ...others] = await Promise.all(ids.map((id) => view(s, id, 20_000)));
      expect(others.map((j) => [j.state, j.result?.tier])).toEqual([
        ['completed', 'batch'],
        ['completed', 'batch'],
      ]);
      // Before, the unfinished answer was taken as complete: completed at the batch price, in one attempt.
      expect([unfinished.state, unfinished.attempts, unfinished.result?.tier]).toEqual(['completed', 2, undefined]);
      expect(generateCalls(s).map((c) => c.serviceTier ?? 'standard')).toEqual(['standard']);
      expect(batchCalls(s)).toHaveLength(1);
      await usageWritten(s);
      const rows = (await s.infra.db.pool.query('SELECT attempt, state, tier, error, cost_usd FROM agent_runs WHERE job_id = $1 ORDER BY attempt', [ids[0]])).rows;
      expect(rows.map((r) => [r.state, r.tier])).toEqual([
        ['failed', 'batch'],
        ['completed', 'standard'],
      ]);
      expect(rows[0].error).toMatch(/batch answer: the answer came without a finishReason/);
      expect(Number(rows[0].cost_usd)).toBeGreaterThan(0);
    } finally {
      s.emulator.clearFaults();
    }
  }, waitsTimeout(POLL.timeout, POLL.timeout));

  it('an expired batch sends its jobs to the standard tier, done before their deadline', async () => {
    s.emulator.resetCalls();
    s.emulator.setBatchTiming({ pendingMs: 0, runMs: -1, expireMs: 48 * 3600_000 });
    const ids = await Promise.all(['e1', 'e2', 'e3'].map((m) => enqueue(s, m, { tier: 'batch', deadline: 7200 })));
    await until('the batch submitted', () => batchCalls(s).length === 1 && batchCalls(s)[0].status === 200);
    s.emulator.advanceClock(48 * 3600_000);
    const done = await Promise.all(ids.map((id) => view(s, id, 20_000)));
    for (const j of done) {
      expect(j.state).toBe('completed');
      expect(j.result.tier).toBeUndefined();
      expect(Date.parse(j.finishedAt)).toBeLessThan(Date.parse(j.deadline));
    }
    expect(generateCalls(s).map((c) => c.serviceTier ?? 'standard')).toEqual(['standard', 'standard', 'standard']);
    expect(batchCalls(s)).toHaveLength(1);
  });

  it('a batch still running near a job deadline is cancelled and its jobs run on the standard tier', async () => {
    s.emulator.resetCalls();
    s.emulator.setBatchTiming({ pendingMs: 0, runMs: 3600_000, expireMs: 48 * 3600_000 });
    // 3602 s: batch tier (>= 3600 s), and within the 1 h margin two seconds from now.
    const ids = await Promise.all(['d1', 'd2', 'd3'].map((m) => enqueue(s, m, { deadline: 3602 })));
    const first = await view(s, ids[0]);
    expect(first.tier).toBe('batch');
    const done = await Promise.all(ids.map((id) => view(s, id, 20_000)));
    expect(done.map((j) => j.state)).toEqual(['completed', 'completed', 'completed']);
    expect(done.every((j) => j.result.tier === undefined)).toBe(true);
    expect(batchCalls(s)).toHaveLength(1);
    const ai = createBatchApi({ apiKey: 'k', baseUrl: s.emulator.url });
    expect((await ai.get(batchCalls(s)[0].batch!)).state).toBe('JOB_STATE_CANCELLED');
    expect(generateCalls(s)).toHaveLength(3);
  });

  it('batch-tier jobs wait in their model\'s batch lane: the org\'s online RPM does not hold them, and they charge none of its online buckets', async () => {
    s.emulator.resetCalls();
    s.emulator.setBatchTiming({ pendingMs: 0, runMs: 60_000, expireMs: 48 * 3600_000 });
    const scheduler = s.runtime.deps.cells[0].scheduler;
    // An org of its own: the earlier tests' standard-tier calls of the stack's org may still have TPM
    // corrections on their way (summed for 100 ms), which would land in this org's buckets once limited.
    const org = randomOrg();
    const auth = { authorization: `Bearer ${await s.newKey(org)}` };
    const post = async (marker: string) => {
      const res = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: auth, payload: { ...riskJob(marker), options: { tier: 'batch' } } });
      expect(res.statusCode, res.body).toBe(202);
      return res.json().id as string;
    };
    const viewOf = async (id: string, waitMs = 0) => (await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}${waitMs ? `?waitMs=${waitMs}` : ''}`, headers: auth })).json();
    // One online request a minute: before batch lanes, only the first of these jobs got dispatched this minute.
    await scheduler.setPlan(org, { rpm: { pro: 1, flash: 1 }, tpm: 1000 });
    try {
      const ids = [await post('lane1'), await post('lane2'), await post('lane3')];
      const stages = await until('all three jobs in one submitted batch', async () => {
        const v = await Promise.all(ids.map((id) => viewOf(id)));
        return v.every((j) => j.stage.name === 'waiting_for_batch' && j.stage.batch) && v.map((j) => j.stage.batch as string);
      });
      expect(new Set(stages).size).toBe(1);
      s.emulator.advanceClock(60_000);
      const done = await Promise.all(ids.map((id) => viewOf(id, 20_000)));
      expect(done.map((j) => [j.state, j.result?.tier])).toEqual(ids.map(() => ['completed', 'batch']));
      expect(generateCalls(s)).toHaveLength(0);
      // Every slot released (the last release carries the last correction): no online bucket of the org exists.
      await until('the org has nothing in flight', async () => (await scheduler.orgStats(org)).inFlight === 0);
      expect(await s.runtime.deps.redis.keys(`${agentqPrefix(s.cfg.QUEUE_PREFIX)}:tb:*:org:${org}:*`)).toEqual([]);
    } finally {
      await scheduler.setPlan(org, {});
    }
  }, waitsTimeout(POLL.timeout, POLL.timeout));

  it('a batch-tier job answered on the standard tier instead (its batch expired) is charged its online request after the call', async () => {
    s.emulator.resetCalls();
    s.emulator.setBatchTiming({ pendingMs: 0, runMs: -1, expireMs: 48 * 3600_000 });
    const scheduler = s.runtime.deps.cells[0].scheduler;
    const org = randomOrg();
    const auth = { authorization: `Bearer ${await s.newKey(org)}` };
    await scheduler.setPlan(org, { rpm: { pro: 10, flash: 10 } });
    try {
      const ids: string[] = [];
      for (const m of ['x1', 'x2', 'x3']) {
        const res = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: auth, payload: { ...riskJob(m), options: { tier: 'batch', deadline: 7200 } } });
        expect(res.statusCode, res.body).toBe(202);
        ids.push(res.json().id as string);
      }
      await until('the batch submitted', () => batchCalls(s).length === 1 && batchCalls(s)[0].status === 200);
      s.emulator.advanceClock(48 * 3600_000);
      const done = await Promise.all(ids.map(async (id) => (await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}?waitMs=20000`, headers: auth })).json()));
      expect(done.map((j) => [j.state, j.result?.tier])).toEqual(ids.map(() => ['completed', undefined]));
      expect(generateCalls(s)).toHaveLength(3);
      // Three online calls no dispatch paid for: the org's bucket (10 a minute) is down by three.
      const bucket = `${agentqPrefix(s.cfg.QUEUE_PREFIX)}:tb:rpm:org:${org}:${s.cfg.GEMINI_MODEL_PRO}`;
      await until('the three requests charged', async () => {
        const [tokens, ts] = await s.runtime.deps.redis.hmget(bucket, 'tokens', 'ts');
        if (tokens === null) return false;
        const [sec, usec] = await s.runtime.deps.redis.time();
        const level = Math.min(10, Number(tokens) + (Number(sec) * 1000 + Number(usec) / 1000 - Number(ts)) * (10 / 60_000));
        return level < 7.5;
      });
    } finally {
      await scheduler.setPlan(org, {});
    }
  }, waitsTimeout(POLL.timeout, POLL.timeout));

  it('one org\'s job near its deadline falls back alone: the other orgs\' jobs stay in the batch and complete at the batch price', async () => {
    s.emulator.resetCalls();
    s.emulator.setBatchTiming({ pendingMs: 0, runMs: 3600_000, expireMs: 48 * 3600_000 });
    const orgB = { authorization: `Bearer ${await s.newKey(randomOrg())}` };
    const post = async (h: Record<string, string>, marker: string, options: Record<string, unknown>) => {
      const res = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: h, payload: { ...riskJob(marker), options } });
      expect(res.statusCode, res.body).toBe(202);
      return res.json().id as string;
    };
    const b = [await post(orgB, 'orgB-1', { tier: 'batch' }), await post(orgB, 'orgB-2', { tier: 'batch' })];
    // Org A's job: inside the 1 h margin 2 s from now.
    const a = await post(s.auth, 'orgA-near', { tier: 'batch', deadline: 3602 });
    const doneA = await view(s, a, 20_000);
    expect([doneA.state, doneA.result?.tier]).toEqual(['completed', undefined]);
    expect(generateCalls(s)).toHaveLength(1);
    // The batch runs on for B's jobs (once, it was cancelled and they ran standard too).
    const ai = createBatchApi({ apiKey: 'k', baseUrl: s.emulator.url });
    expect((await ai.get(batchCalls(s)[0].batch!)).state).toMatch(/^JOB_STATE_(PENDING|RUNNING)$/);
    s.emulator.advanceClock(3600_000);
    const doneB = await Promise.all(b.map(async (id) => (await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}?waitMs=20000`, headers: orgB })).json()));
    expect(doneB.map((j) => [j.state, j.result?.tier])).toEqual([
      ['completed', 'batch'],
      ['completed', 'batch'],
    ]);
    expect(generateCalls(s)).toHaveLength(1);
    expect(batchCalls(s)).toHaveLength(1);
  });

  it('an answer the batch still bills for a job that no longer waits for it (fell back near its deadline, or cancelled) is recorded for its org at the batch price', async () => {
    s.emulator.resetCalls();
    s.emulator.setBatchTiming({ pendingMs: 0, runMs: 3600_000, expireMs: 48 * 3600_000 });
    const orgB = randomOrg();
    const authB = { authorization: `Bearer ${await s.newKey(orgB)}` };
    const post = async (h: Record<string, string>, marker: string, options: Record<string, unknown>) => {
      const res = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: h, payload: { ...riskJob(marker), options } });
      expect(res.statusCode, res.body).toBe(202);
      return res.json().id as string;
    };
    const b = await post(authB, 'drop-B', { tier: 'batch' });
    const cancelled = await post(authB, 'drop-B-cancelled', { tier: 'batch' });
    // Org A's job: inside the 1 h margin 2 s from now, so it runs standard while the batch keeps its request.
    const a = await post(s.auth, 'drop-A-near', { tier: 'batch', deadline: 3602 });
    await until('the batch submitted', () => batchCalls(s).length === 1 && batchCalls(s)[0].status === 200);
    const del = await s.app.inject({ method: 'DELETE', url: `/v1/jobs/${cancelled}`, headers: authB });
    expect(del.statusCode, del.body).toBe(200);
    expect((await view(s, a, 20_000)).state).toBe('completed');
    s.emulator.advanceClock(3600_000);
    expect((await (await s.app.inject({ method: 'GET', url: `/v1/jobs/${b}?waitMs=20000`, headers: authB })).json()).result?.tier).toBe('batch');
    // Gemini answered, and bills, all three requests of the batch.
    const batch = await createBatchApi({ apiKey: 'k', baseUrl: s.emulator.url }).get(batchCalls(s)[0].batch!);
    expect(batch.state).toBe('JOB_STATE_SUCCEEDED');
    expect(batch.responses!.filter((r) => r.response).map((r) => r.jobId).sort()).toEqual([a, b, cancelled].sort());
    await usageWritten(s);
    const orgA = (await s.infra.db.pool.query("SELECT org_id FROM agent_runs WHERE job_id = $1 AND state = 'completed'", [a])).rows[0].org_id;
    const pricing = createPricing();
    for (const [id, org] of [
      [a, orgA],
      [cancelled, orgB],
    ] as const) {
      const meta = batch.responses!.find((r) => r.jobId === id)!.response!.usageMetadata!;
      const usage = { input: meta.promptTokenCount!, output: meta.candidatesTokenCount! };
      const rows = await until(`the dropped batch answer of ${id} recorded`, async () => {
        await usageWritten(s);
        const r = (await s.infra.db.pool.query("SELECT org_id, tier, input_tokens, output_tokens, cost_usd FROM agent_runs WHERE job_id = $1 AND tier = 'batch'", [id])).rows;
        return r.length > 0 && r;
      });
      expect(rows.map((r) => [r.org_id, r.input_tokens, r.output_tokens]), id).toEqual([[org, usage.input, usage.output]]);
      expect(Number(rows[0].cost_usd)).toBeCloseTo(pricing.cost(s.cfg.GEMINI_MODEL_PRO, usage, 'batch').costUsd, 9);
    }
  }, waitsTimeout(POLL.timeout, 20_000, 20_000, POLL.timeout, POLL.timeout, POLL.timeout, POLL.timeout));

  it('an explicit batch tier with a deadline inside the batch margin is refused with a 400 naming options.deadline', async () => {
    const res = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: { ...riskJob('too-near'), options: { tier: 'batch', deadline: 3599 } } });
    expect(res.statusCode).toBe(400);
    expect(res.json().details).toEqual([{ path: 'options.deadline', message: expect.stringMatching(/batch-tier job's deadline must be at least 3600 s away/) }]);
  });

  it('a cancelled batch-tier job is never sent: the next batch holds only live jobs, and its record is marked cancelled', async () => {
    s.emulator.resetCalls();
    s.emulator.setBatchTiming({ pendingMs: 0, runMs: 60_000, expireMs: 48 * 3600_000 });
    const cancelled = await enqueue(s, 'cancel-me', { tier: 'batch' });
    await until('the job waiting for its batch', async () => (await view(s, cancelled)).stage?.name === 'waiting_for_batch');
    const del = await s.app.inject({ method: 'DELETE', url: `/v1/jobs/${cancelled}`, headers: s.auth });
    expect(del.statusCode, del.body).toBe(200);
    expect(del.json().state).toBe('cancelled');

    const ids = [await enqueue(s, 'live1', { tier: 'batch' }), await enqueue(s, 'live2', { tier: 'batch' }), await enqueue(s, 'live3', { tier: 'batch' })];
    await until('the batch submitted', () => batchCalls(s).length === 1 && batchCalls(s)[0].status === 200);
    s.emulator.advanceClock(60_000);
    const done = await Promise.all(ids.map((id) => view(s, id, 20_000)));
    // Without the cancel, the batch took the cancelled job and two live ones, and the third waited for the next.
    expect(batchCalls(s)[0].requests).toBe(3);
    expect((await createBatchApi({ apiKey: 'k', baseUrl: s.emulator.url }).get(batchCalls(s)[0].batch!)).responses!.map((r) => r.jobId).sort()).toEqual(ids.slice().sort());
    expect(done.map((j) => [j.state, j.result?.tier])).toEqual(ids.map(() => ['completed', 'batch']));
    expect((await s.runtime.deps.cells[0].batchStore.job(cancelled))?.state).toBe('cancelled');
  }, waitsTimeout(POLL.timeout, POLL.timeout));

  it('a job re-created under the id of an earlier one (its idempotency key sent again) sends its own request, never the old one\'s', async () => {
    s.emulator.resetCalls();
    s.emulator.setBatchTiming({ pendingMs: 0, runMs: 60_000, expireMs: 48 * 3600_000 });
    const cell = s.runtime.deps.cells[0];
    const idempotencyKey = `reuse-${Date.now()}`;
    const cases = [
      // Cancelled through the API.
      { key: `${idempotencyKey}-cancel`, end: async (id: string) => expect((await s.app.inject({ method: 'DELETE', url: `/v1/jobs/${id}`, headers: s.auth })).statusCode).toBe(200) },
      // Gone without a cancel (retention, by hand): its record is still there, of another incarnation.
      {
        key: `${idempotencyKey}-removed`,
        end: async (id: string) => {
          await cell.scheduler.cancel(id);
          await (await cell.queue.getJob(id))!.remove();
        },
      },
    ];
    const ids: string[] = [];
    for (const c of cases) {
      const old = await enqueue(s, `OLD-${c.key}`, { tier: 'batch', idempotencyKey: c.key });
      await until('the old job waiting for its batch', async () => (await view(s, old)).stage?.name === 'waiting_for_batch');
      await c.end(old);
      // The key's record lapsed (IDEMPOTENCY_TTL_S): the key makes a new job under the id.
      await s.runtime.deps.redis.del(idempotencyRecordKey(s.cfg.QUEUE_PREFIX, old));
      const id = await enqueue(s, `NEW-${c.key}`, { tier: 'batch', idempotencyKey: c.key });
      expect(id).toBe(old);
      await until('the new job waiting for its batch', async () => (await view(s, id)).stage?.name === 'waiting_for_batch');
      const req = (await s.runtime.deps.redis.hget(batchKeys(s.cfg.QUEUE_PREFIX).job(id), 'req'))!;
      expect([req.includes(`NEW-${c.key}`), req.includes(`OLD-${c.key}`)]).toEqual([true, false]);
      ids.push(id);
    }
    ids.push(await enqueue(s, 'reuse-third', { tier: 'batch' }));
    await until('the batch submitted', () => batchCalls(s).length === 1 && batchCalls(s)[0].status === 200);
    s.emulator.advanceClock(60_000);
    const done = await Promise.all(ids.map((id) => view(s, id, 20_000)));
    expect(done.map((j) => [j.state, j.result?.tier])).toEqual(ids.map(() => ['completed', 'batch']));
    expect(batchCalls(s)).toHaveLength(1);
    expect(generateCalls(s)).toHaveLength(0);
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout, POLL.timeout, POLL.timeout));

  /**
   * A batch-tier job parked for its batch whose answer the collector stored with its bill (as `deliver` does), never
   * woken: the answer waits, unread. Its bill's part names this test, so its row is told from any other.
   */
  async function storedUnread(name: string) {
    const cell = s.runtime.deps.cells[0];
    const id = await enqueue(s, `${marker()}-${name}`, { tier: 'batch' });
    const rec = await until(`${name}: its request recorded, the job parked`, async () => {
      const [r, state] = await Promise.all([cell.batchStore.job(id), cell.queue.getJobState(id)]);
      return r?.state === 'pending' && state === 'delayed' && r;
    });
    const part = `batch:${name}-${id}`;
    const { owner } = rec;
    const bill = encodeRun({ jobId: id, jobTs: rec.ts!, attempt: owner!.attempt, part, orgId: owner!.orgId, agent: owner!.agent, action: owner!.action, state: 'delayed', error: 'waiting_for_batch: answer stored, never read', model: s.cfg.GEMINI_MODEL_PRO, inputTokens: 13, outputTokens: 5, cachedTokens: 0, thoughtsTokens: 0, costUsd: 0.000042, tier: 'batch', durationMs: 0, cacheHit: null, requestId: null });
    // Its request alone in its model's pending set, so no batch (BATCH_MAX_REQUESTS=3) takes it while the set-up
    // reads it; and out of that set before its answer is stored, as a batch's open takes it (batch-open-N.lua). Left
    // there, each test's id counted toward the next batch, and the third one's set-up raced the collector's tick.
    const pendingSet = batchKeys(s.cfg.QUEUE_PREFIX).queue(rec.model);
    expect(await s.runtime.deps.redis.zrange(pendingSet, 0, -1)).toEqual([id]);
    expect(await s.runtime.deps.redis.zrem(pendingSet, id)).toBe(1);
    expect(await cell.batchStore.move(id, 'pending', 'done', { field: 'result', value: '{}', bill })).toBe(true);
    const rows = async () => {
      await usageWritten(s);
      return (await s.infra.db.pool.query('SELECT org_id, attempt, state, tier, cost_usd FROM agent_runs WHERE job_id = $1 AND part = $2', [id, part])).rows;
    };
    /**
     * The sweep bills the unread answer once, as the row the collector stored with it, cancels the record and is done
     * with it; `between` runs after the bill is seen (the job's own state, say).
     */
    const billedOnce = async (between?: () => Promise<void>) => {
      const billed = await until('its unread answer billed', async () => {
        const r = await rows();
        return r.length > 0 && r;
      });
      expect(billed.map((r) => [r.org_id, r.attempt, r.state, r.tier, Number(r.cost_usd)])).toEqual([[s.orgId, 1, 'delayed', 'batch', 0.000042]]);
      await between?.();
      expect((await cell.batchStore.job(id))?.state).toBe('cancelled');
      // Once: later sweeps find nothing left of it.
      await until('the sweep done with it', async () => (await s.runtime.deps.redis.zscore(batchKeys(s.cfg.QUEUE_PREFIX).stored, id)) === null);
      expect(await rows()).toHaveLength(1);
    };
    return { cell, id, rec, rows, billedOnce };
  }

  it("an answer stored, never read, of a job BullMQ's stalled limit failed (no processor ran) is billed once", async () => {
    const checks = createStalledCheck(s.cfg.REDIS_URL!, s.cfg.QUEUE_PREFIX, { maxStalledCount: 0 });
    try {
      const { cell, id, billedOnce } = await storedUnread('stalled-limit');
      // A worker fetched the job and died (its lock lapsed): the check finds it past the limit, and the worker that
      // fetches it next fails it without running its processor, which would have read or settled the answer.
      await s.runtime.deps.redis.multi().zrem(cell.queue.toKey('delayed'), id).lpush(cell.queue.toKey('active'), id).exec();
      await checks.stall(cell.queue, id);
      // Read once failed: a job read before holds no failedReason yet.
      await until('the job failed by the stalled limit', async () => (await cell.queue.getJobState(id)) === 'failed');
      const failed = (await cell.queue.getJob(id))!;
      expect(failed.failedReason).toBe(BULLMQ_STALLED_REASON);
      await billedOnce();
    } finally {
      await checks.close();
    }
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout, POLL.timeout));

  it('an answer stored, never read, of a job removed while it waited (Bull Board, retention, obliterate) is billed once', async () => {
    const { cell, id, billedOnce } = await storedUnread('removed');
    // As Bull Board's remove or clean, or BullMQ's retention, takes it: no cancel of ours runs.
    await cell.queue.remove(id);
    expect(await cell.queue.getJob(id)).toBeUndefined();
    await billedOnce();
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout));

  it('an answer still unread as its record nears expiry (its job parked all along) is billed once before the record lapses', async () => {
    const { cell, id, billedOnce } = await storedUnread('lapsing');
    // Stored 71.5 h ago (the record lives 72 h after it): its job still parked, never woken to read it.
    const storedAt = Date.now() - cell.batchStore.recordTtlMs + 1800_000;
    await s.runtime.deps.redis.zadd(batchKeys(s.cfg.QUEUE_PREFIX).stored, 'XX', storedAt, id);
    try {
      // Its job still parked: billed whatever its state.
      await billedOnce(async () => expect(await cell.queue.getJobState(id)).toBe('delayed'));
    } finally {
      await cell.queue.remove(id);
    }
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout));
});

describe('batch creation survives a crash between the intent and the answer of create', () => {
  let s: Stack;
  // The background collector never ticks here (1 h): the test runs collector instances by hand.
  beforeAll(async () => {
    // A 4 s margin: the last test's job falls back on its own 2 s after it joined.
    s = await startStack({ ...BATCH_ENV, BATCH_POLL_MS: '3600000', BATCH_DEADLINE_MARGIN_MS: '4000' }, { worker: true });
  });
  afterAll(async () => s?.close());

  const collector = (batches: Omit<BatchApi, 'resultOf'>, maxRequests = 3) =>
    createBatchCollector({
      store: s.runtime.deps.cells[0].batchStore,
      batches,
      wake: (id) => s.runtime.deps.cells[0].scheduler.repark(id, 0, 'batch').then(() => s.runtime.deps.cells[0].scheduler.dispatch()),
      maxRequests,
      maxAgeMs: 600_000,
      deadlineMarginMs: 3600_000,
      displayPrefix: 'agentq-crash',
      logger: s.logger,
    });

  it.each([
    ['after create reached Gemini (the batch is adopted by displayName)', true],
    ['before create reached Gemini (the batch is created once)', false],
  ])('%s: exactly one batch, no job lost', async (_name, reached) => {
    s.emulator.resetCalls();
    s.emulator.setBatchTiming({ pendingMs: 0, runMs: 60_000, expireMs: 48 * 3600_000 });
    const real = createBatchApi({ apiKey: 'k', baseUrl: s.emulator.url });
    const crashing: Omit<BatchApi, 'resultOf'> = {
      ...real,
      async create(model, displayName, requests) {
        if (reached) await real.create(model, displayName, requests);
        throw new Error('process died here');
      },
    };
    const ids = await Promise.all(['c1', 'c2', 'c3'].map((m) => enqueue(s, `${m}-${String(reached)}`, { tier: 'batch' })));
    const model = (await until('three pending requests', async () => {
      const models = await s.runtime.deps.cells[0].batchStore.models();
      for (const m of models) if ((await s.runtime.deps.cells[0].batchStore.pending(m, 10)).length === 3) return m;
      return undefined;
    }))!;
    await expect(collector(crashing).run()).rejects.toThrow(/process died/);
    const [intent] = await s.runtime.deps.cells[0].batchStore.openIntents();
    expect(intent.model).toBe(model);
    expect(intent.jobs.slice().sort()).toEqual(ids.slice().sort());
    expect(intent.name).toBeUndefined();
    expect(batchCalls(s)).toHaveLength(reached ? 1 : 0);

    // A second collector (a restarted process) resolves the intent: adopts or creates, never both.
    const restarted = collector(real);
    expect(await restarted.run()).toBe(true);
    expect(batchCalls(s)).toHaveLength(1);
    expect((await s.runtime.deps.cells[0].batchStore.intent(intent.id))?.name).toBe(batchCalls(s)[0].batch);
    expect(await restarted.run()).toBe(true);
    expect(batchCalls(s)).toHaveLength(1);

    s.emulator.advanceClock(60_000);
    await restarted.run();
    const done = await Promise.all(ids.map((id) => view(s, id, 20_000)));
    expect(done.map((j) => [j.state, j.result?.tier])).toEqual(ids.map(() => ['completed', 'batch']));
    expect(generateCalls(s)).toHaveLength(0);
    expect(await s.runtime.deps.cells[0].batchStore.openIntents()).toEqual([]);
  });

  it('a request the batch answers with an error fails its job with a typed code; the others complete', async () => {
    s.emulator.resetCalls();
    s.emulator.setBatchTiming({ pendingMs: 0, runMs: 60_000, expireMs: 48 * 3600_000 });
    const ids = await Promise.all(['f1', 'f2', 'f3'].map((m) => enqueue(s, m, { tier: 'batch' })));
    const store = s.runtime.deps.cells[0].batchStore;
    await until('three pending requests', async () => {
      for (const m of await store.models()) if ((await store.pending(m, 10)).length === 3) return true;
      return undefined;
    });
    // One request Gemini refuses inside the batch: a response schema with a text/plain MIME type.
    const key = batchKeys(s.cfg.QUEUE_PREFIX).job(ids[0]);
    const req = JSON.parse((await s.runtime.deps.redis.hget(key, 'req'))!);
    req.config.responseMimeType = 'text/plain';
    await s.runtime.deps.redis.hset(key, 'req', JSON.stringify(req));

    const c = collector(createBatchApi({ apiKey: 'k', baseUrl: s.emulator.url }));
    expect(await c.run()).toBe(true);
    expect(batchCalls(s)).toHaveLength(1);
    s.emulator.advanceClock(60_000);
    await c.run();
    const [bad, ...good] = await Promise.all(ids.map((id) => view(s, id, 20_000)));
    expect(bad.state).toBe('failed');
    expect(bad.error).toMatch(/^\[EBADREQUEST\] Gemini .* batch request failed \(3 INVALID_ARGUMENT\)/);
    expect(bad.attempts).toBe(1);
    expect(good.map((j) => [j.state, j.result?.tier])).toEqual([
      ['completed', 'batch'],
      ['completed', 'batch'],
    ]);
    expect(generateCalls(s)).toHaveLength(0);
  });

  it("a batch's get answered 503, then 429, then reset: each tick retries it, no job falls back, then all complete at the batch price", async () => {
    s.emulator.resetCalls();
    s.emulator.setBatchTiming({ pendingMs: 0, runMs: 60_000, expireMs: 48 * 3600_000 });
    const ids = await Promise.all(['g1', 'g2', 'g3'].map((m) => enqueue(s, m, { tier: 'batch' })));
    const store = s.runtime.deps.cells[0].batchStore;
    await until('three pending requests', async () => {
      for (const m of await store.models()) if ((await store.pending(m, 10)).length === 3) return true;
      return undefined;
    });
    const c = collector(createBatchApi({ apiKey: 'k', baseUrl: s.emulator.url }));
    expect(await c.run()).toBe(true);
    expect(batchCalls(s)).toHaveLength(1);
    s.emulator.advanceClock(60_000);
    s.emulator.script([
      { status: 503, match: { kind: 'batchGet' } },
      { status: 429, retryAfterS: 1, match: { kind: 'batchGet' } },
      { reset: true, match: { kind: 'batchGet' } },
    ]);
    for (let i = 0; i < 3; i++) await c.run();
    expect(s.emulator.calls().filter((x) => x.kind === 'batchGet').map((x) => x.fault)).toEqual(['status:503', 'status:429', 'reset']);
    expect(await store.openIntents()).toHaveLength(1);
    expect((await Promise.all(ids.map((id) => view(s, id)))).map((j) => j.stage?.name)).toEqual(ids.map(() => 'waiting_for_batch'));
    await c.run();
    const done = await Promise.all(ids.map((id) => view(s, id, 20_000)));
    expect(done.map((j) => [j.state, j.result?.tier])).toEqual(ids.map(() => ['completed', 'batch']));
    expect(generateCalls(s)).toHaveLength(0);
    expect(await store.openIntents()).toEqual([]);
  });

  it('a DLQ retry with corrected input of a job whose batch answer was stored, never read, is asked anew with the new input, never served the old answer', async () => {
    s.emulator.resetCalls();
    s.emulator.setBatchTiming({ pendingMs: 0, runMs: 60_000, expireMs: 48 * 3600_000 });
    const cell = s.runtime.deps.cells[0];
    const store = cell.batchStore;
    const m = marker();
    const ids = await Promise.all([`OLD-${m}`, `${m}-b`, `${m}-c`].map((x) => enqueue(s, x, { tier: 'batch' })));
    await until('three pending requests', async () => {
      for (const model of await store.models()) if ((await store.pending(model, 10)).length === 3) return true;
      return undefined;
    });
    const api = createBatchApi({ apiKey: 'k', baseUrl: s.emulator.url });
    const c = collector(api);
    expect(await c.run()).toBe(true);
    expect(batchCalls(s)).toHaveLength(1);
    s.emulator.advanceClock(60_000);
    // The job fails after its batch answered, before it read the answer: a cancel its next claim reads.
    const job = (await cell.queue.getJob(ids[0]))!;
    await s.runtime.deps.redis.set(cancelRequestedKey(s.cfg.QUEUE_PREFIX, ids[0]), String(job.timestamp));
    await c.run();
    const [failed, ...others] = await Promise.all(ids.map((id) => view(s, id, 20_000)));
    expect(others.map((j) => [j.state, j.result?.tier])).toEqual([
      ['completed', 'batch'],
      ['completed', 'batch'],
    ]);
    expect(failed.state).toBe('cancelled');
    // Its answer, never read, left the record when the job failed for good (billed: its usage row).
    const stored = (await store.job(ids[0]))!;
    expect([stored.state, stored.readBy]).toEqual(['cancelled', undefined]);
    const answerOf = async (batch: string) => {
      const r = (await api.get(batch)).responses!.find((x) => x.jobId === ids[0])!;
      return JSON.parse(r.response!.candidates![0].content!.parts![0].text!) as Record<string, unknown>;
    };
    const oldAnswer = await answerOf(batchCalls(s)[0].batch!);

    const admin = { authorization: `Bearer ${await s.newKey(s.orgId, 'org-admin')}` };
    const { input } = riskJob(`NEW-${m}`);
    const retry = await s.app.inject({ method: 'POST', url: `/v1/dlq/${ids[0]}/retry`, headers: admin, payload: { input } });
    expect(retry.statusCode, retry.body).toBe(202);
    // Its run either takes the stored answer (completed: the old input's) or records its new request.
    const seen = await until('the retried job completed or waiting for a new batch', async () => {
      const [v, rec] = await Promise.all([view(s, ids[0]), store.job(ids[0])]);
      return (v.state === 'completed' || rec?.state === 'pending') && { state: v.state as string, rec: rec!.state };
    });
    expect([seen.state === 'completed', seen.rec]).toEqual([false, 'pending']);
    const req = (await s.runtime.deps.redis.hget(batchKeys(s.cfg.QUEUE_PREFIX).job(ids[0]), 'req'))!;
    expect([req.includes(`NEW-${m}`), req.includes(`OLD-${m}`)]).toEqual([true, false]);

    // The model is asked anew: a batch of its own with the new request, whose answer the job completes with.
    const c1 = collector(api, 1);
    await c1.run();
    expect(batchCalls(s)).toHaveLength(2);
    expect(batchCalls(s)[1].requests).toBe(1);
    s.emulator.advanceClock(60_000);
    await c1.run();
    const done = await view(s, ids[0], 20_000);
    expect([done.state, done.result?.tier]).toEqual(['completed', 'batch']);
    const newAnswer = await answerOf(batchCalls(s)[1].batch!);
    expect(newAnswer).not.toEqual(oldAnswer);
    expect(done.result.data).toMatchObject(newAnswer);
    expect(generateCalls(s)).toHaveLength(0);
  }, waitsTimeout(POLL.timeout, POLL.timeout));

  it('an answer the batch stored that no attempt read is billed once its job no longer takes it: cancelled, failed for good, or retried from the DLQ with new input', async () => {
    s.emulator.resetCalls();
    s.emulator.setBatchTiming({ pendingMs: 0, runMs: 60_000, expireMs: 48 * 3600_000 });
    const cell = s.runtime.deps.cells[0];
    const store = cell.batchStore;
    const m = marker();
    const [cancelled, failed, retried] = await Promise.all(['cancel', 'fail', 'retry'].map((x) => enqueue(s, `${m}-unread-${x}`, { tier: 'batch' })));
    await until('three pending requests', async () => {
      for (const model of await store.models()) if ((await store.pending(model, 10)).length === 3) return true;
      return undefined;
    });
    const api = createBatchApi({ apiKey: 'k', baseUrl: s.emulator.url });
    // A collector that stores the answers and wakes no job: each answer waits, unread, for its job.
    const quiet = createBatchCollector({ store, batches: api, wake: async () => undefined, maxRequests: 3, maxAgeMs: 600_000, deadlineMarginMs: 3600_000, displayPrefix: 'agentq-unread', logger: s.logger });
    expect(await quiet.run()).toBe(true);
    s.emulator.advanceClock(60_000);
    await quiet.run();
    expect((await Promise.all([cancelled, failed, retried].map((id) => store.job(id)))).map((r) => [r?.state, r?.readBy])).toEqual([
      ['done', undefined],
      ['done', undefined],
      ['done', undefined],
    ]);
    const batch = await api.get(batchCalls(s)[0].batch!);
    const intent = (await store.job(cancelled))!.intent!;

    // Cancelled while it waited for its wake-up.
    const del = await s.app.inject({ method: 'DELETE', url: `/v1/jobs/${cancelled}`, headers: s.auth });
    expect(del.statusCode, del.body).toBe(200);
    // Failed for good before it read the answer (its input can never run), as are `retried`'s first attempts.
    for (const id of [failed, retried]) {
      const job = (await cell.queue.getJob(id))!;
      await job.updateData({ ...job.data, input: { startup: 42 } });
      await cell.scheduler.repark(id, 0, 'batch');
      await cell.scheduler.dispatch();
      expect((await view(s, id, 20_000)).state).toBe('failed');
    }
    // A record that still holds an unread answer when the job is retried from the DLQ with new input (a failure
    // that never reached the worker's processor, BullMQ's stalled limit say): the retry drops it, billed.
    const { owner, ts } = (await store.job(retried))!;
    const leftBill = { jobId: retried, jobTs: ts, attempt: owner!.attempt, part: 'batch:left-unread', orgId: owner!.orgId, agent: owner!.agent, action: owner!.action, state: 'delayed', model: s.cfg.GEMINI_MODEL_PRO, inputTokens: 11, outputTokens: 7, costUsd: 0.000123, tier: 'batch', durationMs: 0 };
    await s.runtime.deps.redis.hset(batchKeys(s.cfg.QUEUE_PREFIX).job(retried), { state: 'done', result: '{}', bill: JSON.stringify(leftBill) });
    const admin = { authorization: `Bearer ${await s.newKey(s.orgId, 'org-admin')}` };
    const retry = await s.app.inject({ method: 'POST', url: `/v1/dlq/${retried}/retry`, headers: admin, payload: { input: riskJob(`${m}-new`).input } });
    expect(retry.statusCode, retry.body).toBe(202);

    const pricing = createPricing();
    const rowsOf = async (id: string) =>
      (await s.infra.db.pool.query("SELECT org_id, attempt, state, part, tier, input_tokens, output_tokens, cost_usd FROM agent_runs WHERE job_id = $1 AND part LIKE 'batch:%' ORDER BY part", [id])).rows;
    for (const id of [cancelled, failed, retried]) {
      const meta = batch.responses!.find((r) => r.jobId === id)!.response!.usageMetadata!;
      const usage = { input: meta.promptTokenCount!, output: meta.candidatesTokenCount! };
      const rows = await until(`the unread batch answer of ${id} recorded`, async () => {
        await usageWritten(s);
        const r = await rowsOf(id);
        return r.some((x) => x.part === `batch:${intent}`) && r;
      });
      const own = rows.filter((r) => r.part === `batch:${intent}`);
      expect(own.map((r) => [r.org_id, r.attempt, r.state, r.tier, r.input_tokens, r.output_tokens]), id).toEqual([[s.orgId, 1, 'delayed', 'batch', usage.input, usage.output]]);
      expect(Number(own[0].cost_usd)).toBeCloseTo(pricing.cost(s.cfg.GEMINI_MODEL_PRO, usage, 'batch').costUsd, 9);
    }
    await until('the answer the DLQ retry dropped recorded', async () => {
      await usageWritten(s);
      return (await rowsOf(retried)).some((r) => r.part === 'batch:left-unread');
    });
    const usage = (await s.app.inject({ method: 'GET', url: '/v1/usage?groupBy=tier', headers: s.auth })).json();
    expect(usage.groups.find((g: { key: string }) => g.key === 'batch').jobs).toBeGreaterThanOrEqual(3);
  }, waitsTimeout(20_000, 20_000, POLL.timeout, POLL.timeout, POLL.timeout, POLL.timeout, POLL.timeout));

  /** A batch-tier job whose batch answered (stored, not read yet), the tier that serves it, and a standard call that counts. */
  async function answeredBatchJob(name: string) {
    const store = s.runtime.deps.cells[0].batchStore;
    const answer = { text: 'from the batch', tier: 'batch' } as unknown as GenerateResult;
    const tier = createBatchTier({ store, batches: { resultOf: () => answer }, deadlineMarginMs: 4000 });
    const id = `${name}-${Date.now()}`;
    const ts = Date.now();
    await store.add(id, ts, s.cfg.GEMINI_MODEL_PRO, { contents: [] }, undefined);
    await store.move(id, 'pending', 'done', { field: 'result', value: '{}' });
    let calls = 0;
    const standard = async () => {
      calls += 1;
      return { text: 'standard' } as unknown as GenerateResult;
    };
    return { store, answer, tier, id, ts, standard, standardCalls: () => calls };
  }

  it('a job re-created under the id of a removed one whose answer was stored, never read: the old answer is billed as its record is replaced', async () => {
    const store = s.runtime.deps.cells[0].batchStore;
    const id = `replaced-${Date.now()}`;
    const ts = Date.now();
    const owner = { orgId: s.orgId, agent: 'RiskAnalyzer', action: 'analyze_risks', attempt: 1 };
    await store.add(id, ts, s.cfg.GEMINI_MODEL_PRO, { contents: [] }, undefined, Date.now(), owner);
    const part = `batch:replaced-${id}`;
    const bill = encodeRun({ jobId: id, jobTs: ts, attempt: 1, part, orgId: s.orgId, agent: owner.agent, action: owner.action, state: 'delayed', model: s.cfg.GEMINI_MODEL_PRO, inputTokens: 3, outputTokens: 2, cachedTokens: 0, thoughtsTokens: 0, costUsd: 0.000031, tier: 'batch', durationMs: 0, cacheHit: null, requestId: null });
    await store.move(id, 'pending', 'done', { field: 'result', value: '{}', bill });
    // The job was removed (no sweep runs here), and a new one under its id (its idempotency key sent again) records its request.
    expect(await store.add(id, ts + 1, s.cfg.GEMINI_MODEL_PRO, { contents: [] }, undefined, Date.now(), owner)).toBe('pending');
    const rows = await until('the replaced answer billed', async () => {
      await usageWritten(s);
      const r = (await s.infra.db.pool.query('SELECT job_ts, state, tier, cost_usd FROM agent_runs WHERE job_id = $1 AND part = $2', [id, part])).rows;
      return r.length > 0 && r;
    });
    expect(rows.map((r) => [Number(r.job_ts), r.state, r.tier, Number(r.cost_usd)])).toEqual([[ts, 'delayed', 'batch', 0.000031]]);
  }, waitsTimeout(POLL.timeout, POLL.timeout));

  it('a worker killed after its job read the batch answer: the re-run of that attempt is served the stored answer again, a retry runs standard', async () => {
    const { store, answer, tier, id, ts, standard, standardCalls } = await answeredBatchJob('crash-read');
    // The processor's path for one attempt that never finishes (SIGKILL before BullMQ records it), then the
    // stalled re-run of the same attempt (BullMQ leaves attemptsMade as it was), then a retry.
    const run = (attemptsMade: number) =>
      tier.generate({ job: { id, timestamp: ts, attemptsMade, data: {} }, model: s.cfg.GEMINI_MODEL_PRO } as unknown as JobContext, { prompt: 'p' }, standard);
    expect(await run(0)).toBe(answer);
    expect(await run(0)).toBe(answer);
    expect(standardCalls()).toBe(0);
    expect(await run(1)).toEqual({ text: 'standard' });
    expect(standardCalls()).toBe(1);
    expect((await store.job(id))?.state).toBe('fallback');
  });

  it("a route's retry or fallback within the attempt that was served the batch answer runs standard, never that answer again", async () => {
    const { answer, tier, id, ts, standard, standardCalls } = await answeredBatchJob('route-retry');
    // One attempt's context, as the route guard calls the model again with it (its answer failed validation, say).
    const ctx = { job: { id, timestamp: ts, attemptsMade: 0, data: {} }, model: s.cfg.GEMINI_MODEL_PRO } as unknown as JobContext;
    expect(await tier.generate(ctx, { prompt: 'p' }, standard)).toBe(answer);
    // Before, the same attempt was served the same stored answer again (the same failure, billed again).
    expect(await tier.generate(ctx, { prompt: 'p' }, standard)).toEqual({ text: 'standard' });
    ctx.model = s.cfg.GEMINI_MODEL_FAST;
    expect(await tier.generate(ctx, { prompt: 'p' }, standard)).toEqual({ text: 'standard' });
    expect(standardCalls()).toBe(2);
  });

  // Last in this block: its request stays in the pending set (as fallback, never sent) after the job ran.
  it('with no collector answering, a job runs on the standard tier on its own at deadline - margin/2', async () => {
    s.emulator.resetCalls();
    // Explicit batch tier; deadline 4 s with a 4 s margin: its own fallback time is 2 s from now.
    const id = await enqueue(s, 'alone', { tier: 'batch', deadline: 4 });
    const waiting = await until('the job waiting for its batch', async () => {
      const v = await view(s, id);
      return v.stage.name === 'waiting_for_batch' && v.stage;
    });
    expect(waiting).toMatchObject({ state: 'COLLECTING', eta: expect.any(String) });
    expect(waiting.batch).toBeUndefined();
    const done = await view(s, id, 20_000);
    expect(done.state).toBe('completed');
    expect(done.result.tier).toBeUndefined();
    expect(Date.parse(done.finishedAt)).toBeGreaterThanOrEqual(Date.parse(waiting.eta) - 50);
    expect(batchCalls(s)).toHaveLength(0);
    expect(generateCalls(s)).toHaveLength(1);
    expect((await s.runtime.deps.cells[0].batchStore.job(id))?.state).toBe('fallback');
  });
});
