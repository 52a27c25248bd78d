import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { countingAdmission } from '../src/producers/counting-admission.js';
import { createAdmission } from '../src/producers/admission.js';
import { createCircuitBreaker } from '../src/shared/limits/circuit-breaker.js';
import type { JobContext } from '../src/workers/middleware.js';
import { randomOrg } from './helpers/env.js';
import { startStack, type Stack } from './helpers/stack.js';
import { marker, parseProm, riskJob, sampleSum, type Sample } from './helpers/ops.js';
import { usageStreamKey } from '../src/shared/core/queue-keys.js';
import { usageWritten } from './helpers/usage.js';

const ADMIN_TOKEN = 'adm-metrics-5e8a1c77b0f3';

describe('GET /metrics', () => {
  let s: Stack;
  const admin = { authorization: `Bearer ${ADMIN_TOKEN}` };

  beforeAll(async () => {
    s = await startStack({ ADMIN_TOKEN, BREAKER_FAILURE_THRESHOLD: '1000' }, { worker: true });
  });
  afterAll(async () => s?.close());

  const scrape = async (): Promise<Sample[]> => {
    const res = await s.app.inject({ method: 'GET', url: '/metrics', headers: admin });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/plain/);
    return parseProm(res.body);
  };
  const run = async (payload: Record<string, unknown>) => {
    const id = (await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload })).json().id;
    return (await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}?waitMs=15000`, headers: s.auth })).json();
  };

  it('is only served to the operator: the ADMIN_TOKEN or an operator key', async () => {
    expect((await s.app.inject({ method: 'GET', url: '/metrics' })).statusCode).toBe(401);
    expect((await s.app.inject({ method: 'GET', url: '/metrics', headers: s.auth })).statusCode).toBe(403);
    expect((await s.app.inject({ method: 'GET', url: '/metrics', headers: { authorization: 'Bearer wrong-token' } })).statusCode).toBe(401);
    expect((await s.app.inject({ method: 'GET', url: '/metrics', headers: { authorization: `Bearer ${await s.newKey(randomOrg(), 'org-admin')}` } })).statusCode).toBe(403);
    expect((await s.app.inject({ method: 'GET', url: '/metrics', headers: { authorization: `Bearer ${await s.operatorKey()}` } })).statusCode).toBe(200);
  });

  it('moves as jobs run: durations, cost, tokens, cache levels, start latency, errors, DLQ entries', async () => {
    const before = await scrape();
    const m = marker();
    const first = await run(riskJob(m));
    expect(first.state).toBe('completed');
    const again = await run(riskJob(m));
    expect(again.result.cacheHit).toBeTruthy();
    const bad = marker();
    s.emulator.script({ status: 400, match: { promptIncludes: bad } });
    expect((await run(riskJob(bad))).state).toBe('failed');
    // The failed listener runs just after the job lands in the failed set.
    const after = await vi.waitFor(
      async () => {
        const now = await scrape();
        expect(sampleSum(now, 'agentq_dlq_entries_total', { class: 'poison' }), 'dlq metric').toBeGreaterThan(sampleSum(before, 'agentq_dlq_entries_total', { class: 'poison' }));
        return now;
      },
      { timeout: 20_000, interval: 50 },
    );

    const delta = (name: string, labels: Record<string, string> = {}) => sampleSum(after, name, labels) - sampleSum(before, name, labels);
    const agent = { agent: 'RiskAnalyzer' };
    expect(delta('agentq_job_duration_seconds_count', { ...agent, outcome: 'completed' })).toBe(2);
    expect(delta('agentq_job_duration_seconds_count', { ...agent, outcome: 'failed' })).toBe(1);
    expect(delta('agentq_cost_usd_total', agent)).toBeCloseTo(first.result.costUsd, 10);
    expect(delta('agentq_tokens_total', { ...agent, direction: 'input' })).toBe(first.result.tokensUsed.input);
    expect(delta('agentq_tokens_total', { ...agent, direction: 'output' })).toBe(first.result.tokensUsed.output);
    expect(delta('agentq_cache_hits_total', { level: again.result.cacheHit })).toBe(1);
    // Only completed jobs say anything about caches: the first missed l1, the repeat missed l1 unless served there.
    expect(delta('agentq_cache_misses_total', { level: 'l1' })).toBe(again.result.cacheHit === 'l1' ? 1 : 2);
    expect(delta('agentq_job_start_latency_seconds_count', agent)).toBe(3);
    expect(delta('agentq_job_errors_total', { ...agent, type: 'bad_request' })).toBe(1);
    expect(delta('agentq_dlq_entries_total', { ...agent, class: 'poison' })).toBe(1);
  });

  it('counts the estimated embedding cost and tokens apart from the model cost, by source, as the ledger rows are made: an attempt, an ingest, a search', async () => {
    const before = await scrape();
    const auth = { authorization: `Bearer ${await s.newKey(randomOrg(), 'org-admin')}` };
    const question = `How should we measure metrics-embed churn among pilot customers ${marker()}?`;
    const post = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: auth, payload: { agent: 'KnowledgeAssistant', action: 'answer', input: { question, includeChatFacts: true } } });
    expect(post.statusCode).toBe(202);
    const view = (await s.app.inject({ method: 'GET', url: `/v1/jobs/${post.json().id}?waitMs=20000`, headers: auth })).json();
    expect(view.state).toBe('completed');
    const documents = [{ external_id: `metrics-embed-${marker()}`, content: 'Pilot customers renewed at 112% net revenue retention' }];
    expect((await s.app.inject({ method: 'POST', url: '/v1/knowledge/chat_facts', headers: auth, payload: { documents } })).statusCode).toBe(200);
    expect((await s.app.inject({ method: 'POST', url: '/v1/knowledge/search', headers: auth, payload: { query: question, tables: ['chat_facts'] } })).statusCode).toBe(200);
    const after = await scrape();
    await usageWritten(s);
    // The same figures as the rows this org's ledger holds (estimated), each under the source that made it.
    const { rows } = await s.infra.db.pool.query(
      "SELECT kind, sum(embedding_cost_usd)::float8 AS usd, sum(embedding_tokens)::int AS tokens FROM agent_runs WHERE org_id = (SELECT org_id FROM agent_runs WHERE job_id = $1 LIMIT 1) GROUP BY kind",
      [view.id],
    );
    const spent = Object.fromEntries(rows.map((r) => [r.kind, Number(r.usd)]));
    const tokens = Object.fromEntries(rows.map((r) => [r.kind, Number(r.tokens)]));
    expect(Object.keys(spent).sort()).toEqual(['attempt', 'ingest', 'search']);
    const delta = (source: string, name = 'agentq_embedding_cost_usd_total') => sampleSum(after, name, { source, estimated: 'true' }) - sampleSum(before, name, { source, estimated: 'true' });
    for (const source of ['attempt', 'ingest', 'search']) {
      expect(spent[source], source).toBeGreaterThan(0);
      expect(delta(source), source).toBeCloseTo(spent[source], 10);
      // Their estimated tokens beside them, the rows' own.
      expect(tokens[source], source).toBeGreaterThan(0);
      expect(delta(source, 'agentq_embedding_tokens_total'), source).toBe(tokens[source]);
    }
    // Not in the model cost: agentq_cost_usd_total moved by what Gemini billed the job's call only.
    expect(sampleSum(after, 'agentq_cost_usd_total', { agent: 'KnowledgeAssistant' }) - sampleSum(before, 'agentq_cost_usd_total', { agent: 'KnowledgeAssistant' })).toBeCloseTo(view.result.costUsd, 10);
  });

  it('reports queue depth per queue and state as BullMQ counts it, and the DLQ size', async () => {
    for (let i = 0; i < 2; i++) {
      const res = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: { ...riskJob(marker()), options: { delayMs: 600_000 } } });
      expect(res.statusCode).toBe(202);
    }
    await vi.waitFor(async () => expect(await s.runtime.queue.getJobCounts('waiting', 'active'), 'queue to be idle').toEqual({ waiting: 0, active: 0 }), { timeout: 20_000, interval: 50 });
    const samples = await scrape();
    const counts = await s.runtime.queue.getJobCounts('waiting', 'prioritized', 'active', 'delayed', 'failed');
    expect(counts.delayed).toBe(2);
    expect(counts.failed).toBeGreaterThanOrEqual(1);
    for (const state of ['waiting', 'prioritized', 'active', 'delayed', 'failed']) {
      expect(sampleSum(samples, 'agentq_queue_jobs', { queue: 'agent-jobs', state })).toBe(counts[state]);
    }
    expect(samples.some((x) => x.name === 'agentq_queue_jobs' && x.labels.queue === 'agent-flows')).toBe(true);
    expect(samples.some((x) => x.name === 'agentq_queue_jobs' && x.labels.queue === 'agent-maintenance')).toBe(true);
    expect(sampleSum(samples, 'agentq_dlq_size')).toBe(counts.failed);
  });

  it('reports the usage rows no sink has written yet (the usage stream\'s backlog)', async () => {
    // An API process alone: no worker, so no sink drains the stream while the test reads it.
    const api = await startStack({ ADMIN_TOKEN }, { worker: false });
    try {
      const key = usageStreamKey(api.cfg.QUEUE_PREFIX);
      for (let i = 0; i < 3; i++) await api.runtime.deps.redis.xadd(key, '*', 'run', `{"n":${i}}`);
      const res = await api.app.inject({ method: 'GET', url: '/metrics', headers: admin });
      expect(sampleSum(parseProm(res.body), 'agentq_usage_backlog_rows')).toBe(3);
    } finally {
      await api.close();
    }
  });

  it('reads circuit breaker state from Redis at scrape', async () => {
    const samples = await scrape();
    expect(samples.find((x) => x.name === 'agentq_circuit_breaker_state' && x.labels.key === `gemini:${s.cfg.GEMINI_MODEL_PRO}`)?.value).toBe(0);
    const breaker = createCircuitBreaker({ redis: s.runtime.deps.redis, prefix: `${s.cfg.QUEUE_PREFIX}:agentq`, failureThreshold: 1 });
    await breaker.onFailure('gemini:metrics-test-model', false);
    const later = await scrape();
    expect(later.find((x) => x.name === 'agentq_circuit_breaker_state' && x.labels.key === 'gemini:metrics-test-model')?.value).toBe(2);
  });

  it('counts guard delays and exposes the SSE gauge to other features', async () => {
    const ops = s.runtime.features.find((f) => f.name === 'ops')!;
    const before = await scrape();
    ops.onDelay!({} as JobContext, 'rate_limited', 1500);
    s.runtime.deps.metrics.sseStreams.inc();
    s.runtime.deps.metrics.sseStreams.inc();
    const after = await scrape();
    expect(sampleSum(after, 'agentq_job_delays_total', { reason: 'rate_limited' }) - sampleSum(before, 'agentq_job_delays_total', { reason: 'rate_limited' })).toBe(1);
    expect(sampleSum(after, 'agentq_sse_streams_open') - sampleSum(before, 'agentq_sse_streams_open')).toBe(2);
    s.runtime.deps.metrics.sseStreams.set(0);
  });

  it('counts admission refusals through the wrapper the runtime can put around its admission', async () => {
    let allow = true;
    const admission = countingAdmission(
      { admit: async () => (allow ? { allowed: true as const } : { allowed: false as const, kind: 'rate_limit' as const, reason: 'rate limit exceeded (plan general)', retryAfterS: 1 }) },
      () => s.runtime.deps.metrics,
    );
    const before = sampleSum(await scrape(), 'agentq_admission_rejections_total', { reason: 'rate_limit' });
    expect((await admission.admit(s.orgId, 1)).allowed).toBe(true);
    allow = false;
    expect(await admission.admit(s.orgId, 1)).toMatchObject({ allowed: false, retryAfterS: 1 });
    expect(sampleSum(await scrape(), 'agentq_admission_rejections_total', { reason: 'rate_limit' }) - before).toBe(1);
  });

  it("counts a quota's refusals (the monthly budget, the daily job limit) as quota, by what refused them, never by the reason's words", async () => {
    let refuse: 'budget' | 'daily' | 'plan' = 'budget';
    const admission = countingAdmission(
      createAdmission({
        limiter: { plans: { general: { points: 1, durationS: 1 } }, consume: async () => (refuse === 'plan' ? { allowed: false, retryAfterS: 1 } : { allowed: true }) } as never,
        planOf: async () => 'general',
        quota: async (_org, dayStartMs) => ({
          budget: refuse === 'budget' ? { allowed: false, reason: 'monthly budget of $5 reached', retryAfterS: 60 } : { allowed: true },
          daily: { limit: 1, recorded: 0, dayStartMs },
        }),
        dailyJobs: () => ({ reserve: async () => ({ reserved: false, count: 1 }), refund: async () => undefined }),
        defaultPlan: 'general',
        cacheMs: 0,
      }),
      () => s.runtime.deps.metrics,
    );
    const count = async (reason: string) => sampleSum(await scrape(), 'agentq_admission_rejections_total', { reason });
    const before = { quota: await count('quota'), rate: await count('rate_limit'), other: await count('other') };
    expect(await admission.admit(s.orgId, 1)).toMatchObject({ allowed: false, kind: 'quota', reason: expect.stringMatching(/monthly budget/) });
    refuse = 'daily';
    expect(await admission.admit(s.orgId, 1)).toMatchObject({ allowed: false, kind: 'quota', reason: expect.stringMatching(/daily job limit/) });
    refuse = 'plan';
    expect(await admission.admit(s.orgId, 1)).toMatchObject({ allowed: false, kind: 'rate_limit' });
    // Both quota refusals were 'other' when the label was read from the reason's words ("quota" in neither).
    expect({ quota: (await count('quota')) - before.quota, rate: (await count('rate_limit')) - before.rate, other: (await count('other')) - before.other }).toEqual({ quota: 2, rate: 1, other: 0 });
  });
});
