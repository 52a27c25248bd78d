import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRunStore, type AgentRun } from '../src/shared/infra/db/agent-runs.js';
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
