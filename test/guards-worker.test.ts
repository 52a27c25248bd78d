import { Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createOrgStore } from '../src/shared/infra/db/orgs.js';
import { createCircuitBreaker } from '../src/shared/limits/circuit-breaker.js';
import { startStack, type Stack } from './helpers/stack.js';
import { POLL } from './helpers/wait.js';
import { usageWritten } from './helpers/usage.js';

const risk = (name: string) => ({ agent: 'RiskAnalyzer', action: 'analyze_risks', input: { startup: { name, industry: 'edtech' } } });

async function enqueue(s: Stack, payload: object, auth = s.auth) {
  const res = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: auth, payload });
  expect(res.statusCode).toBe(202);
  return res.json().id as string;
}
const waitView = async (s: Stack, id: string, auth = s.auth, waitMs = 20_000) =>
  (await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}?waitMs=${waitMs}`, headers: auth })).json();
const generateCalls = (s: Stack) => s.emulator.calls().filter((c) => c.kind === 'generate' || c.kind === 'stream').length;

describe('API admission and quotas', () => {
  let s: Stack;
  beforeAll(async () => {
    s = await startStack({ RATE_LIMIT_PLANS: JSON.stringify({ general: { points: 3, durationS: 60 } }), QUOTA_CACHE_MS: '0' });
  });
  afterAll(async () => s?.close());

  it('answers 429 with Retry-After once the org plan is spent, enqueueing nothing', async () => {
    const queue = new Queue('agent-jobs', { connection: { url: s.cfg.REDIS_URL }, prefix: s.cfg.QUEUE_PREFIX });
    for (let i = 0; i < 3; i++) await enqueue(s, risk(`adm-${i}`));
    const before = await queue.count();
    const res = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: risk('adm-over') });
    expect(res.statusCode).toBe(429);
    expect(Number(res.headers['retry-after'])).toBeGreaterThan(0);
    expect(res.json()).toMatchObject({ error: expect.stringMatching(/rate limit/) });
    expect(res.json().retryAfter).toBeGreaterThan(0);
    expect(await queue.count()).toBe(before);
    // Another org has its own allowance.
    expect((await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: { authorization: `Bearer ${await s.newKey()}` }, payload: risk('adm-b') })).statusCode).toBe(202);
    await queue.close();
  });

  it('admits a pipeline run as one request for its steps: over the plan it is a 429 and no run starts', async () => {
    const key = await s.newKey();
    const auth = { authorization: `Bearer ${key}` };
    const flows = new Queue('agent-flows', { connection: { url: s.cfg.REDIS_URL }, prefix: s.cfg.QUEUE_PREFIX });
    const before = await flows.count();
    const input = { companyName: 'Acme', answers: [{ question: 'q?', answer: 'a.' }] };
    const start = () => s.app.inject({ method: 'POST', url: '/v1/pipelines/wizard_completion', headers: auth, payload: { input } });
    // The plan's 3 points a minute: three runs, then a 429.
    for (let i = 0; i < 3; i++) expect((await start()).statusCode).toBe(202);
    const over = await start();
    expect(over.statusCode).toBe(429);
    expect(Number(over.headers['retry-after'])).toBeGreaterThan(0);
    expect(await flows.count()).toBe(before + 3);
    await flows.close();
  });

  it('refuses enqueue over the daily job quota with a clear reason', async () => {
    const org = `quota_${Date.now()}`;
    const key = await s.newKey(org);
    await createOrgStore({ pool: s.infra.db.pool }).upsert({ id: org, dailyJobLimit: 1 });
    // A job of today that ran: the day's count starts there (seeded from agent_runs).
    await s.infra.db.pool.query(
      `INSERT INTO agent_runs (job_id, job_ts, attempt, org_id, agent, action, model, state, input_tokens, output_tokens, cost_usd, duration_ms)
       VALUES ('q-1', $2, 1, $1, 'RiskAnalyzer', 'analyze_risks', 'm', 'completed', 1, 1, 0, 1)`,
      [org, Date.now()],
    );
    const res = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: { authorization: `Bearer ${key}` }, payload: risk('quota') });
    expect(res.statusCode).toBe(429);
    expect(res.json().error).toMatch(/daily job limit of 1/);
  });
});

describe('worker guards', () => {
  let s: Stack;
  let queue: Queue;
  beforeAll(async () => {
    s = await startStack(
      {
        WORKER_CONCURRENCY: '25',
        QUOTA_CACHE_MS: '0',
        ALLOWED_MODELS: 'flaky-model',
        MODEL_LIMITS: JSON.stringify({ 'limited-model': { orgRpm: 1, rpm: 1000, tpm: 10_000_000 } }),
        BREAKER_FAILURE_THRESHOLD: '2',
        BREAKER_TIMEOUT_MS: '60000',
        JOB_ATTEMPTS: '1',
        AGENT_ROUTES: JSON.stringify({
          'DealScorer:pipeline_summary': { primary: 'broken-model', fallback: 'gemini-2.5-flash' },
          'TaskGenerator:suggest_next_actions': { primary: 'gemini-2.5-pro', fallback: 'gemini-2.0-flash', timeoutMs: 300, retries: 1 },
          'RiskAnalyzer:dashboard_risk_summary': { primary: 'gemini-2.5-pro', fallback: 'gemini-2.0-flash', timeoutMs: 300, retries: 0 },
        }),
      },
      { worker: true },
    );
    queue = new Queue('agent-jobs', { connection: { url: s.cfg.REDIS_URL }, prefix: s.cfg.QUEUE_PREFIX });
  });
  afterAll(async () => {
    s.emulator.clearFaults();
    await queue?.close();
    await s?.close();
  });

  it('serves an identical job from the cache at no cost, and records the hit', async () => {
    const first = await waitView(s, await enqueue(s, risk('cached-co')));
    expect(first.result.cacheHit).toBeUndefined();
    const calls = generateCalls(s);
    const secondId = await enqueue(s, risk('cached-co'));
    const second = await waitView(s, secondId);
    expect(['l1', 'l2']).toContain(second.result.cacheHit);
    expect(second.result).toMatchObject({ success: true, costUsd: 0, tokensUsed: { input: 0, output: 0 } });
    expect(second.result.data).toEqual(first.result.data);
    expect(generateCalls(s)).toBe(calls);
    await usageWritten(s);
    const { rows } = await s.infra.db.pool.query('SELECT cache_hit FROM agent_runs WHERE job_id = $1', [secondId]);
    expect(['l1', 'l2']).toContain(rows[0].cache_hit);
  });

  it('invalidates the org cache over HTTP so the next identical job calls the model', async () => {
    await waitView(s, await enqueue(s, risk('invalidate-co')));
    const del = await s.app.inject({ method: 'DELETE', url: '/v1/cache?agent=RiskAnalyzer', headers: { authorization: `Bearer ${await s.newKey(s.orgId, 'org-admin')}` } });
    expect(del.statusCode).toBe(200);
    const calls = generateCalls(s);
    const again = await waitView(s, await enqueue(s, risk('invalidate-co')));
    expect(again.result.cacheHit).toBeUndefined();
    expect(generateCalls(s)).toBe(calls + 1);
  });

  it('makes one model call for 20 identical jobs in flight at once', async () => {
    s.emulator.script({ latencyMs: 400, match: { promptIncludes: 'single-flight-co' }, times: 1 });
    const calls = generateCalls(s);
    // One bulk request adds all 20 at once (20 concurrent single enqueues can meet the API's 1 s enqueue
    // deadline on a busy machine, and which request is first is not what this test is about).
    const bulk = await s.app.inject({ method: 'POST', url: '/v1/jobs/bulk', headers: s.auth, payload: { jobs: Array.from({ length: 20 }, () => risk('single-flight-co')) } });
    expect(bulk.statusCode).toBe(202);
    const ids = (bulk.json().jobs as Array<{ id: string }>).map((j) => j.id);
    expect(new Set(ids).size).toBe(20);
    const views = await Promise.all(ids.map((id) => waitView(s, id)));
    expect(views.every((v) => v.state === 'completed' && v.result.success)).toBe(true);
    expect(generateCalls(s)).toBe(calls + 1);
    expect(new Set(views.map((v) => JSON.stringify(v.result.data))).size).toBe(1);
  });

  it('delays (not fails) a job whose org bucket is empty, without touching other orgs', async () => {
    const payload = (n: string) => ({ ...risk(n), options: { model: 'limited-model' } });
    const a1 = await waitView(s, await enqueue(s, payload('bucket-a1')));
    expect(a1.state).toBe('completed');
    const a2 = await enqueue(s, payload('bucket-a2'));
    const otherAuth = { authorization: `Bearer ${await s.newKey()}` };
    const b1 = await waitView(s, await enqueue(s, payload('bucket-b1'), otherAuth), otherAuth);
    expect(b1.state).toBe('completed');
    const job = await queue.getJob(a2);
    expect(await job!.getState()).toBe('delayed');
    expect(job!.attemptsMade).toBe(0);
    // Refill is 1/min: the job waits about a minute, never failing.
    expect(job!.delay + job!.timestamp - Date.now()).toBeGreaterThan(10_000);
  });

  it('opens the breaker after consecutive failures and serves the routed job from the fallback', async () => {
    s.emulator.script({ status: 500, match: { model: 'broken-model' }, times: -1 });
    const first = await waitView(s, await enqueue(s, { agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: 'br-1' } }));
    expect(first.state).toBe('completed');
    expect(first.result.route).toBe('fallback');
    expect(first.result.model).toBe('gemini-2.5-flash');
    await waitView(s, await enqueue(s, { agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: 'br-2' } }));
    const breaker = createCircuitBreaker({ redis: s.runtime.deps.redis, prefix: `${s.cfg.QUEUE_PREFIX}:agentq` });
    expect((await breaker.state('gemini:broken-model')).state).toBe('open');
    const brokenCalls = () => s.emulator.calls().filter((c) => c.model.includes('broken-model')).length;
    const before = brokenCalls();
    const third = await waitView(s, await enqueue(s, { agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: 'br-3' } }));
    expect(third.result.route).toBe('fallback');
    expect(brokenCalls()).toBe(before);
  });

  it('delays a job (no attempt used) while its breaker is open and no fallback exists', async () => {
    s.emulator.script({ status: 503, match: { model: 'flaky-model' }, times: -1 });
    for (const n of ['fl-1', 'fl-2']) {
      const v = await waitView(s, await enqueue(s, { ...risk(n), options: { model: 'flaky-model' } }));
      expect(v.state).toBe('failed');
    }
    const id = await enqueue(s, { ...risk('fl-3'), options: { model: 'flaky-model' } });
    await vi.waitFor(async () => expect(await (await queue.getJob(id))!.getState()).toBe('delayed'), POLL);
    const job = await queue.getJob(id);
    expect(job!.attemptsMade).toBe(0);
  });

  it('aborts a primary that times out, retries it, then serves the fallback', async () => {
    s.emulator.script({ hang: true, match: { model: 'gemini-2.5-pro', promptIncludes: 'timeout-co' }, times: 2 });
    const view = await waitView(s, await enqueue(s, { agent: 'TaskGenerator', action: 'suggest_next_actions', input: { startupId: 'timeout-co', startup: { name: 'timeout-co' } } }));
    expect(view.state).toBe('completed');
    expect(view.result.route).toBe('fallback');
    expect(view.result.model).toBe('gemini-2.0-flash');
    const aborted = s.emulator.calls().filter((c) => c.model.includes('gemini-2.5-pro') && c.aborted);
    expect(aborted.length).toBe(2);
  });

  it('holds a job at start when its org is over its monthly budget (quota), using no attempt', async () => {
    const org = `budget_${Date.now()}`;
    const auth = { authorization: `Bearer ${await s.newKey(org)}` };
    // Enqueued while under budget; the spend that crosses it is recorded before the job starts.
    await queue.pause();
    const id = await enqueue(s, risk('over-budget'), auth);
    await createOrgStore({ pool: s.infra.db.pool }).upsert({ id: org, monthlyBudgetUsd: 1 });
    await s.infra.db.pool.query(
      `INSERT INTO agent_runs (job_id, attempt, org_id, agent, action, model, state, input_tokens, output_tokens, cost_usd, duration_ms)
       VALUES ('spent-1', 1, $1, 'RiskAnalyzer', 'analyze_risks', 'm', 'completed', 1, 1, 2.5, 1)`,
      [org],
    );
    const calls = generateCalls(s);
    await queue.resume();
    await vi.waitFor(async () => expect(await (await queue.getJob(id))!.getState()).toBe('delayed'), POLL);
    const job = await queue.getJob(id);
    expect(job!.attemptsMade).toBe(0);
    expect(generateCalls(s)).toBe(calls);
    // And the API now refuses new work for that org with the reason.
    const refused = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: auth, payload: risk('over-budget-2') });
    expect(refused.statusCode).toBe(429);
    expect(refused.json().error).toMatch(/monthly budget/);
  });

  it('names both routes when primary and fallback fail', async () => {
    s.emulator.script([
      { status: 500, match: { model: 'gemini-2.5-pro' }, times: -1 },
      { status: 500, match: { model: 'gemini-2.0-flash' }, times: -1 },
    ]);
    const view = await waitView(s, await enqueue(s, { agent: 'RiskAnalyzer', action: 'dashboard_risk_summary', input: { startupId: 'both-fail-co' } }));
    expect(view.state).toBe('failed');
    expect(view.error).toMatch(/both primary \(gemini-2.5-pro\) and fallback \(gemini-2.0-flash\) failed/);
  });
});
