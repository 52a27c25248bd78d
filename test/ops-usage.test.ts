import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRunStore, searchRunInsert, type AgentRun } from '../src/shared/infra/db/agent-runs.js';
import { randomOrg } from './helpers/env.js';
import { startStack, type Stack } from './helpers/stack.js';

describe('GET /v1/usage', () => {
  let s: Stack;
  let otherKey: string;

  beforeAll(async () => {
    s = await startStack({}, { worker: false });
    otherKey = await s.newKey(randomOrg());
    const runs = createRunStore({ pool: s.infra.db.pool });
    const base = { orgId: s.orgId, action: 'analyze_risks', state: 'completed' as const, error: null };
    const rows: AgentRun[] = [
      // job-1: a failed attempt, then a completed one on day 1.
      { ...base, jobId: 'u-1', attempt: 1, agent: 'RiskAnalyzer', model: 'pro', state: 'failed', inputTokens: 0, outputTokens: 0, costUsd: 0, durationMs: 100, createdAt: new Date('2030-01-01T10:00:00Z') },
      { ...base, jobId: 'u-1', attempt: 2, agent: 'RiskAnalyzer', model: 'pro', inputTokens: 100, outputTokens: 50, costUsd: 0.5, durationMs: 200, createdAt: new Date('2030-01-01T10:01:00Z') },
      { ...base, jobId: 'u-2', attempt: 1, agent: 'RiskAnalyzer', model: 'pro', inputTokens: 0, outputTokens: 0, costUsd: 0, durationMs: 300, cacheHit: 'l1', createdAt: new Date('2030-01-02T10:00:00Z') },
      { ...base, jobId: 'u-3', attempt: 1, agent: 'DealScorer', model: 'flash', inputTokens: 10, outputTokens: 5, costUsd: 0.01, durationMs: 400, createdAt: new Date('2030-01-02T11:00:00Z') },
      // Another org's run in the same window must not show.
      { ...base, orgId: randomOrg(), jobId: 'u-4', attempt: 1, agent: 'RiskAnalyzer', model: 'pro', inputTokens: 999, outputTokens: 999, costUsd: 9, durationMs: 999, createdAt: new Date('2030-01-01T12:00:00Z') },
    ];
    for (const r of rows) await runs.record(r);
  });
  afterAll(async () => s?.close());

  const get = (query: string, headers = s.auth) => s.app.inject({ method: 'GET', url: `/v1/usage?${query}`, headers });
  const window = 'from=2030-01-01&to=2030-01-03';

  it('groups by agent with jobs, tokens, cost, cache hit rate and duration percentiles', async () => {
    const res = await get(`${window}&groupBy=agent`);
    expect(res.statusCode).toBe(200);
    const body = res.json();
    expect(body).toMatchObject({ from: '2030-01-01T00:00:00.000Z', to: '2030-01-03T00:00:00.000Z', groupBy: 'agent' });
    const risk = body.groups.find((g: { key: string }) => g.key === 'RiskAnalyzer');
    expect(risk).toMatchObject({ jobs: 2, tokens: { input: 100, output: 50, total: 150 }, costUsd: 0.5 });
    expect(risk.cacheHitRate).toBeCloseTo(0.5, 10);
    expect(risk.durationMs.p50).toBe(200);
    expect(risk.durationMs.p95).toBeCloseTo(290, 6);
    expect(body.groups.map((g: { key: string }) => g.key)).toEqual(['DealScorer', 'RiskAnalyzer']);
  });

  it('groups by day and by model', async () => {
    const days = (await get(`${window}&groupBy=day`)).json().groups;
    expect(days.map((g: { key: string; jobs: number }) => [g.key, g.jobs])).toEqual([
      ['2030-01-01', 1],
      ['2030-01-02', 2],
    ]);
    const models = (await get(`${window}&groupBy=model`)).json().groups;
    expect(models.map((g: { key: string }) => g.key)).toEqual(['flash', 'pro']);
  });

  it("byTier shows each tier's embedding calls, as groupBy=tier files them: the tiers add up to the total", async () => {
    const runs = createRunStore({ pool: s.infra.db.pool });
    const at = new Date('2030-02-01T10:00:00Z');
    const base = { orgId: s.orgId, agent: 'RiskAnalyzer', action: 'analyze_risks', model: 'flash', state: 'completed' as const, attempt: 1, durationMs: 100, createdAt: at };
    const embedding = { embeddingTokens: 40, embeddingCostUsd: 0.000006, embeddingEstimated: true };
    // A batch-tier attempt that made embedding calls, a flex one with none, and a search API query (no job).
    await runs.record({ ...base, jobId: 'u-tier-1', tier: 'batch', inputTokens: 100, outputTokens: 50, costUsd: 0.25, standardCostUsd: 0.5, ...embedding });
    await runs.record({ ...base, jobId: 'u-tier-2', tier: 'flex', inputTokens: 10, outputTokens: 5, costUsd: 0.01, standardCostUsd: 0.02 });
    const search = searchRunInsert({ searchId: 'search:u-tier', orgId: s.orgId, model: 'gemini-embedding-001', embeddingTokens: 8, embeddingCostUsd: 0.0000012, durationMs: 5 });
    await s.infra.db.pool.query(search.sql, search.params);
    await s.infra.db.pool.query('UPDATE agent_runs SET created_at = $2 WHERE job_id = $1', ['search:u-tier', at]); // into the window
    const body = (await get('from=2030-02-01&to=2030-02-02&groupBy=agent')).json();
    const tiers = Object.fromEntries(body.byTier.map((t: { tier: string }) => [t.tier, t]));
    expect(Object.keys(tiers).sort()).toEqual(['batch', 'flex', 'standard']);
    expect(tiers.batch.embedding).toEqual({ tokens: 0, costUsd: 0, estimated: true });
    expect(tiers.standard).toMatchObject({ jobs: 0, costUsd: 0, embedding: { tokens: 48, estimated: true } });
    expect(tiers.standard.embedding.costUsd).toBeCloseTo(0.0000072, 10);
    const sum = (f: (t: { costUsd: number; embedding: { costUsd: number } }) => number) => body.byTier.reduce((n: number, t: never) => n + f(t), 0);
    expect(sum((t) => t.costUsd)).toBeCloseTo(body.total.costUsd, 10);
    expect(sum((t) => t.embedding.costUsd)).toBeCloseTo(body.total.embedding.costUsd, 10);
    expect(body.total.embedding.tokens).toBe(48);
  });

  it("shows only the caller's org", async () => {
    expect((await get(window, { authorization: `Bearer ${otherKey}` })).json().groups).toEqual([]);
  });

  it('answers 400 naming the bad field', async () => {
    const cases: Array<[string, string]> = [
      ['from=yesterday', 'query.from'],
      ['to=2030-13-45', 'query.to'],
      ['groupBy=org', 'query.groupBy'],
      ['from=2030-01-03&to=2030-01-01', 'query.from'],
      ['from=2000-01-01&to=2030-01-01', 'query.from'],
      ['since=2030-01-01', 'query.since'],
    ];
    for (const [query, path] of cases) {
      const res = await get(query);
      expect(res.statusCode, query).toBe(400);
      expect(res.json().details[0].path, query).toBe(path);
    }
  });
});
