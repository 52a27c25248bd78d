import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Principal } from '../src/producers/auth.js';
import { createRunStore } from '../src/shared/infra/db/agent-runs.js';
import { orgInScope, usageScopeOf } from '../src/producers/usage-scope.js';
import { randomOrg } from './helpers/env.js';
import { startStack, type Stack } from './helpers/stack.js';
import { seedUsage, USAGE_WINDOW } from './helpers/usage-seed.js';

const ADMIN_TOKEN = 'usage-dash-admin-7c1e93a0b5';
const basic = (secret: string) => ({ authorization: `Basic ${Buffer.from(`admin:${secret}`).toString('base64')}` });
const operator = { authorization: `Bearer ${ADMIN_TOKEN}` };
const window = `from=${USAGE_WINDOW.from}&to=${USAGE_WINDOW.toExclusive}`;

describe('usageScopeOf: the dashboard’s access decision', () => {
  it('gives the operator every org, an org admin its org, and a member nothing', () => {
    const key = (role: 'member' | 'org-admin'): Principal => ({ keyId: 'k1', orgId: 'acme', role });
    expect(usageScopeOf({ role: 'operator' })).toEqual({ kind: 'all' });
    expect(usageScopeOf({ role: 'operator', keyId: 'k9' })).toEqual({ kind: 'all' });
    expect(usageScopeOf(key('org-admin'))).toEqual({ kind: 'org', orgId: 'acme' });
    expect(usageScopeOf(key('member'))).toEqual({ kind: 'forbidden' });
    expect(orgInScope({ kind: 'all' }, undefined)).toEqual({ allowed: true, org: null });
    expect(orgInScope({ kind: 'all' }, 'beta')).toEqual({ allowed: true, org: 'beta' });
    expect(orgInScope({ kind: 'org', orgId: 'acme' }, undefined)).toEqual({ allowed: true, org: 'acme' });
    expect(orgInScope({ kind: 'org', orgId: 'acme' }, 'beta')).toEqual({ allowed: false });
  });
});

describe('GET /admin/usage and its data API', () => {
  let s: Stack;
  let orgB: string;
  let adminA: string;
  let adminB: string;

  beforeAll(async () => {
    s = await startStack({ ADMIN_TOKEN }, { worker: false });
    orgB = randomOrg();
    adminA = await s.newKey(s.orgId, 'org-admin');
    adminB = await s.newKey(orgB, 'org-admin');
    await seedUsage(s.infra.db.pool, { a: s.orgId, b: orgB }, s.cfg.QUEUE_PREFIX);
  });
  afterAll(async () => s?.close());

  const get = (url: string, headers: Record<string, string>) => s.app.inject({ method: 'GET', url, headers });

  it('answers 401 with a Basic challenge without credentials, and 403 to a member key', async () => {
    for (const url of ['/admin/usage', `/admin/usage/api?${window}`, '/admin/usage/assets/chart.umd.min.js']) {
      const res = await get(url, {});
      expect(res.statusCode, url).toBe(401);
      expect(res.headers['www-authenticate'], url).toMatch(/^Basic realm=/);
      expect((await get(url, s.auth)).statusCode, url).toBe(403);
      expect((await get(url, basic('wrong'))).statusCode, url).toBe(401);
    }
  });

  it('serves the page and the bundled Chart.js to the operator and to org admins', async () => {
    for (const headers of [operator, basic(ADMIN_TOKEN), basic(adminA)]) {
      const page = await get('/admin/usage', headers);
      expect(page.statusCode).toBe(200);
      expect(page.headers['content-type']).toMatch(/text\/html/);
      // Every script is the app's own: nothing is fetched from another origin.
      const scripts = [...page.body.matchAll(/<script src="([^"]+)"/g)].map((m) => m[1]);
      expect(scripts).toEqual(['/admin/usage/assets/chart.umd.min.js', '/admin/usage/assets/usage.js']);
      const chart = await get(scripts[0], headers);
      expect(chart.statusCode).toBe(200);
      expect(chart.headers['content-type']).toMatch(/javascript/);
      expect(chart.body).toMatch(/Chart\.js v4\./);
    }
    expect((await get('/admin/usage/assets/other.js', operator)).statusCode).toBe(400);
  });

  it('gives an org admin exactly /v1/usage of its org, and refuses another org', async () => {
    const member = await s.newKey(s.orgId);
    for (const groupBy of ['day', 'agent', 'model']) {
      const dash = (await get(`/admin/usage/api?${window}&groupBy=${groupBy}`, { authorization: `Bearer ${adminA}` })).json();
      const v1 = (await get(`/v1/usage?${window}&groupBy=${groupBy}`, { authorization: `Bearer ${member}` })).json();
      expect(dash.scope).toEqual({ kind: 'org', orgId: s.orgId });
      expect(dash.org).toBe(s.orgId);
      expect(dash.groups).toEqual(v1.groups);
      expect(dash.total).toEqual(v1.total);
      expect(dash.byTier).toEqual(v1.byTier);
    }
    const forbidden = await get(`/admin/usage/api?${window}&org=${orgB}`, { authorization: `Bearer ${adminA}` });
    expect(forbidden.statusCode).toBe(403);
    expect(forbidden.body).not.toContain('TaskGenerator');
    expect((await get(`/admin/usage/api?${window}&org=${s.orgId}`, { authorization: `Bearer ${adminA}` })).statusCode).toBe(200);
  });

  it('reports totals with percentiles over every attempt of the window', async () => {
    const total = (await get(`/v1/usage?${window}`, s.auth)).json().total;
    // Org A: 5 attempts in the window (120, 850, 12, 430, 390 ms), 4 jobs, 1 cache hit of 4 completed attempts.
    expect(total).toMatchObject({ key: 'total', jobs: 4, tokens: { input: 2640, output: 580, total: 3220 } });
    expect(total.costUsd).toBeCloseTo(0.005932, 9);
    expect(total.cacheHitRate).toBeCloseTo(0.25, 9);
    expect(total.durationMs.p50).toBe(390);
    expect(total.durationMs.p95).toBeCloseTo(766, 6);
    const empty = (await get('/v1/usage?from=2037-01-01&to=2037-01-02', s.auth)).json();
    expect(empty.groups).toEqual([]);
    expect(empty.total).toEqual({ key: 'total', jobs: 0, tokens: { input: 0, output: 0, total: 0, cached: 0, thoughts: 0 }, costUsd: 0, standardCostUsd: 0, savingsUsd: 0, embedding: { tokens: 0, costUsd: 0, estimated: true, ingest: { tokens: 0, costUsd: 0 }, search: { tokens: 0, costUsd: 0 } }, cacheHitRate: 0, durationMs: { p50: 0, p95: 0 } });
  });

  it('gives the operator every org, per org, or one org of its choice', async () => {
    const all = (await get(`/admin/usage/api?${window}&groupBy=org`, operator)).json();
    expect(all.scope).toEqual({ kind: 'all' });
    expect(all.org).toBeNull();
    const seeded = all.groups.filter((g: { key: string }) => g.key === s.orgId || g.key === orgB);
    expect(seeded.map((g: { key: string; jobs: number }) => [g.key, g.jobs])).toEqual(
      [
        [s.orgId, 4],
        [orgB, 2],
      ].sort((x, y) => String(x[0]).localeCompare(String(y[0]))),
    );
    const oneB = (await get(`/admin/usage/api?${window}&groupBy=agent&org=${orgB}`, operator)).json();
    const v1B = (await get(`/v1/usage?${window}&groupBy=agent`, { authorization: `Bearer ${adminB}` })).json();
    expect(oneB.groups).toEqual(v1B.groups);
    expect(oneB.total).toEqual(v1B.total);
  });

  it("splits the window by tier as /v1/usage does: each org's tiers, and every org's, add up to the total", async () => {
    // A window of this test's own (no other file writes into 2039): batch, flex and standard attempts of two orgs,
    // one with embedding calls.
    const runs = createRunStore({ pool: s.infra.db.pool });
    const at = new Date('2039-05-10T10:00:00Z');
    const base = { agent: 'RiskAnalyzer', action: 'analyze_risks', model: 'gemini-2.5-flash', state: 'completed' as const, attempt: 1, durationMs: 100, createdAt: at };
    const tag = `${s.cfg.QUEUE_PREFIX}-tier`;
    await runs.recordMany([
      { ...base, orgId: s.orgId, jobId: `${tag}-1`, tier: 'batch', inputTokens: 100, outputTokens: 50, costUsd: 0.25, standardCostUsd: 0.5, embeddingTokens: 40, embeddingCostUsd: 0.000006, embeddingEstimated: true },
      { ...base, orgId: s.orgId, jobId: `${tag}-2`, tier: 'flex', inputTokens: 10, outputTokens: 5, costUsd: 0.01, standardCostUsd: 0.02 },
      { ...base, orgId: orgB, jobId: `${tag}-3`, inputTokens: 20, outputTokens: 10, costUsd: 0.03, standardCostUsd: 0.03 },
    ]);
    const tierWindow = 'from=2039-05-10&to=2039-05-11';
    const sum = (body: { byTier: Array<{ costUsd: number; embedding: { costUsd: number } }> }, f: (t: { costUsd: number; embedding: { costUsd: number } }) => number) => body.byTier.reduce((n, t) => n + f(t), 0);
    const addsUp = (body: { byTier: Array<{ costUsd: number; embedding: { costUsd: number } }>; total: { costUsd: number; embedding: { costUsd: number } } }) => {
      expect(sum(body, (t) => t.costUsd)).toBeCloseTo(body.total.costUsd, 10);
      expect(sum(body, (t) => t.embedding.costUsd)).toBeCloseTo(body.total.embedding.costUsd, 10);
    };
    const all = (await get(`/admin/usage/api?${tierWindow}&groupBy=org`, operator)).json();
    expect(all.byTier.map((t: { tier: string }) => t.tier)).toEqual(expect.arrayContaining(['batch', 'flex', 'standard']));
    expect(all.total.costUsd).toBeGreaterThanOrEqual(0.29);
    addsUp(all);
    const orgA = (await get(`/admin/usage/api?${tierWindow}&groupBy=agent`, { authorization: `Bearer ${adminA}` })).json();
    const v1 = (await get(`/v1/usage?${tierWindow}&groupBy=agent`, { authorization: `Bearer ${adminA}` })).json();
    expect(orgA.byTier).toEqual(v1.byTier);
    const tiers = Object.fromEntries(orgA.byTier.map((t: { tier: string }) => [t.tier, t]));
    expect(Object.keys(tiers).sort()).toEqual(['batch', 'flex', 'standard']);
    // The batch attempt's embedding calls are billed at `standard` (the embedding model's online price), as /v1/usage files them.
    expect(tiers.batch).toMatchObject({ jobs: 1, costUsd: 0.25, standardCostUsd: 0.5, savingsUsd: 0.25, embedding: { tokens: 0, costUsd: 0, estimated: true } });
    expect(tiers.standard).toMatchObject({ jobs: 0, costUsd: 0, embedding: { tokens: 40, estimated: true } });
    addsUp(orgA);
  });

  it('answers 400 naming the bad field', async () => {
    for (const [query, path] of [
      ['groupBy=team', 'query.groupBy'],
      ['org=bad org', 'query.org'],
      ['from=2037-05-12&to=2037-05-10', 'query.from'],
      // A date that does not exist (Date would roll it over to March 1), and a time read in the server's zone.
      ['from=2037-02-30&to=2037-03-05', 'query.from'],
      ['from=2037-05-01T10:00&to=2037-05-02T00:00Z', 'query.from'],
    ]) {
      const res = await get(`/admin/usage/api?${query}`, operator);
      expect(res.statusCode, query).toBe(400);
      expect(res.json().details[0].path, query).toBe(path);
    }
  });
});
