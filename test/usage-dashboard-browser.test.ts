import type { Browser, BrowserContext, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomOrg } from './helpers/env.js';
import { artifactPath, launchChromium } from './helpers/chromium.js';
import { startStack, type Stack } from './helpers/stack.js';
import { seedUsage, usageWindow } from './helpers/usage-seed.js';

/** This file's own window: usage-dashboard.test.ts seeds 2037's beside it in the shared database. */
const USAGE_WINDOW = usageWindow(2038);
import { ingestRunInsert, searchRunInsert } from '../src/shared/infra/db/agent-runs.js';

const ADMIN_TOKEN = 'usage-browser-adm-52d9c0e1f7';
const DAYS = ['2038-05-10', '2038-05-11', '2038-05-12'];

interface Group {
  key: string;
  jobs: number;
  tokens: { input: number; output: number; total: number };
  costUsd: number;
  cacheHitRate: number;
  durationMs: { p50: number; p95: number };
  embedding: { tokens: number; costUsd: number; estimated: true; ingest: { tokens: number; costUsd: number }; search: { tokens: number; costUsd: number } };
}

// How the page writes numbers: the test expects the API's numbers in exactly this form.
const usd = (n: number) => `$${n.toFixed(6)}`;
const int = (n: number) => Math.round(n).toLocaleString('en-US');
const pct = (n: number) => `${(n * 100).toFixed(1)}%`;
const ms = (n: number) => `${n.toFixed(1)} ms`;
// Each table's embedding columns beside the cost Gemini billed (estimated, as the tiles: until 2026-12-07 only the tiles had them).
const row = (g: Group) => [g.key, int(g.jobs), int(g.tokens.input), int(g.tokens.output), usd(g.costUsd), int(g.embedding.tokens), usd(g.embedding.costUsd), pct(g.cacheHitRate), ms(g.durationMs.p50), ms(g.durationMs.p95)];

// A browser on a busy 2-core machine is slow to start and paint: each test gets 60 s (idle: a few seconds).
describe('the usage dashboard in a real browser', () => {
  let s: Stack;
  let base: string;
  let browser: Browser;
  let orgB: string;
  let adminA: string;

  beforeAll(async () => {
    s = await startStack({ ADMIN_TOKEN }, { worker: false });
    orgB = randomOrg();
    adminA = await s.newKey(s.orgId, 'org-admin');
    await seedUsage(s.infra.db.pool, { a: s.orgId, b: orgB }, s.cfg.QUEUE_PREFIX, USAGE_WINDOW);
    // Embedding calls in the window (estimated figures, apart from costUsd): an attempt's, an ingest's and a
    // search's of org A, an ingest's of org B.
    const pool = s.infra.db.pool;
    const tag = s.cfg.QUEUE_PREFIX;
    await pool.query("UPDATE agent_runs SET embedding_tokens = 1200, embedding_cost_usd = 0.00018, embedding_estimated = true WHERE job_id = $1", [`${tag}-3`]);
    const model = 'gemini-embedding-001';
    for (const q of [
      ingestRunInsert({ ingestId: `ingest:${tag}-a`, batch: 1, orgId: s.orgId, table: 'chat_facts', model, embeddingTokens: 52_000, embeddingCostUsd: 0.0078, durationMs: 40 }, 1),
      searchRunInsert({ searchId: `search:${tag}-a`, orgId: s.orgId, model, embeddingTokens: 14, embeddingCostUsd: 0.0000021, durationMs: 5 }),
      ingestRunInsert({ ingestId: `ingest:${tag}-b`, batch: 1, orgId: orgB, table: 'playbooks', model, embeddingTokens: 3300, embeddingCostUsd: 0.000495, durationMs: 30 }, 1),
    ]) {
      await pool.query(q.sql, q.params);
    }
    await pool.query("UPDATE agent_runs SET created_at = '2038-05-11T16:00:00Z' WHERE job_id IN ($1, $2, $3)", [`ingest:${tag}-a`, `search:${tag}-a`, `ingest:${tag}-b`]);
    base = await s.app.listen({ port: 0, host: '127.0.0.1' });
    browser = await launchChromium();
  });
  afterAll(async () => {
    await browser?.close();
    await s?.close();
  });

  /** `/v1/usage` of one org, as its own member key sees it: what the page must show. */
  async function v1(orgKey: string, groupBy: string): Promise<{ groups: Group[]; total: Group }> {
    const res = await s.app.inject({ method: 'GET', url: `/v1/usage?from=${USAGE_WINDOW.from}&to=${USAGE_WINDOW.toExclusive}&groupBy=${groupBy}`, headers: { authorization: `Bearer ${orgKey}` } });
    expect(res.statusCode).toBe(200);
    return res.json();
  }

  /** A logged-in page that may reach this server only: any other request fails the test. */
  async function open(password: string, query: string): Promise<{ context: BrowserContext; page: Page; foreign: string[] }> {
    const context = await browser.newContext({ httpCredentials: { username: 'admin', password }, viewport: { width: 1400, height: 1000 } });
    const foreign: string[] = [];
    await context.route('**/*', (route) => {
      if (route.request().url().startsWith(base)) return route.continue();
      foreign.push(route.request().url());
      return route.abort();
    });
    const page = await context.newPage();
    await page.goto(`${base}/admin/usage?${query}`);
    await page.locator('body[data-state="ready"]').waitFor();
    return { context, page, foreign };
  }

  const tableRows = (page: Page, id: string) => page.locator(`#${id} tbody tr`).evaluateAll((rows) => rows.map((r) => [...r.querySelectorAll('td')].map((td) => td.textContent)));
  /** A table's embedding column headers: visible, and each says its figures are estimated. */
  async function expectEstimatedColumns(page: Page, id: string) {
    for (const field of ['embeddingTokens', 'embeddingCostUsd']) {
      const th = page.locator(`#${id} thead th[data-field="${field}"]`);
      expect(await th.textContent()).toMatch(/^Embedding .*estimated$/i);
      expect(await th.isVisible()).toBe(true);
    }
  }
  const tile = (page: Page, field: string) => page.locator(`#total [data-field="${field}"]`).textContent();
  const chartData = (page: Page, id: string) =>
    page.evaluate((canvas) => {
      const chart = (globalThis as unknown as { Chart: { getChart(id: string): { data: { labels: string[]; datasets: Array<{ data: number[] }> } } } }).Chart.getChart(canvas);
      return { labels: chart.data.labels, datasets: chart.data.datasets.map((d) => d.data) };
    }, id);

  async function expectTotals(page: Page, total: Group) {
    expect(await tile(page, 'costUsd')).toBe(usd(total.costUsd));
    expect(await tile(page, 'jobs')).toBe(int(total.jobs));
    expect(await tile(page, 'tokens')).toBe(`${int(total.tokens.input)} / ${int(total.tokens.output)}`);
    expect(await tile(page, 'p50')).toBe(ms(total.durationMs.p50));
    expect(await tile(page, 'p95')).toBe(ms(total.durationMs.p95));
    expect(await tile(page, 'cacheHitRate')).toBe(pct(total.cacheHitRate));
    // The embedding figures, estimated and said so on the page, apart from the cost Gemini billed.
    const e = total.embedding;
    expect(await tile(page, 'embeddingCostUsd')).toBe(usd(e.costUsd));
    expect(await tile(page, 'embeddingCostParts')).toBe(`ingest ${usd(e.ingest.costUsd)} · search ${usd(e.search.costUsd)}`);
    expect(await tile(page, 'embeddingTokens')).toBe(int(e.tokens));
    expect(await tile(page, 'embeddingTokenParts')).toBe(`ingest ${int(e.ingest.tokens)} · search ${int(e.search.tokens)}`);
    for (const field of ['embeddingCostUsd', 'embeddingTokens']) {
      const label = page.locator(`#total .tile:has([data-field="${field}"]) .label`);
      expect(await label.textContent()).toMatch(/estimated/i);
      expect(await label.isVisible()).toBe(true);
    }
  }

  it("shows an org admin its org's numbers, exactly as /v1/usage reports them, drawn by the bundled Chart.js", async () => {
    const { context, page, foreign } = await open(adminA, `from=${USAGE_WINDOW.from}&to=${USAGE_WINDOW.to}`);
    try {
      const [day, agent, model] = [await v1(s.apiKey, 'day'), await v1(s.apiKey, 'agent'), await v1(s.apiKey, 'model')];
      expect(day.total.jobs).toBe(4);
      // The seeded embedding calls are in the report, so the page has non-zero figures to show.
      expect(day.total.embedding).toEqual({ tokens: 1200 + 52_000 + 14, costUsd: expect.closeTo(0.00018 + 0.0078 + 0.0000021, 10), estimated: true, ingest: { tokens: 52_000, costUsd: expect.closeTo(0.0078, 10) }, search: { tokens: 14, costUsd: expect.closeTo(0.0000021, 10) } });
      expect(await page.locator('#scope').textContent()).toBe(`org ${s.orgId}`);
      await expectTotals(page, day.total);
      expect(await tableRows(page, 'by-day')).toEqual(day.groups.map(row));
      expect(await tableRows(page, 'by-agent')).toEqual(agent.groups.map(row));
      expect(await tableRows(page, 'by-model')).toEqual(model.groups.map(row));
      // The agent's and the model's embedding calls have figures to show (the seeded attempt's, ingest's and search's).
      expect(agent.groups.some((g) => g.embedding.tokens > 0) && model.groups.some((g) => g.embedding.tokens > 0)).toBe(true);
      for (const id of ['by-day', 'by-agent', 'by-model']) await expectEstimatedColumns(page, id);

      const costPerDay = await chartData(page, 'chart-day-cost');
      expect(costPerDay.labels).toEqual(DAYS);
      expect(costPerDay.datasets[0]).toEqual(DAYS.map((d) => day.groups.find((g) => g.key === d)?.costUsd ?? 0));
      const tokens = await chartData(page, 'chart-day-tokens');
      expect(tokens.datasets).toEqual([DAYS.map((d) => day.groups.find((g) => g.key === d)!.tokens.input), DAYS.map((d) => day.groups.find((g) => g.key === d)!.tokens.output)]);
      expect((await chartData(page, 'chart-day-jobs')).datasets[0]).toEqual(DAYS.map((d) => day.groups.find((g) => g.key === d)!.jobs));
      expect(await chartData(page, 'chart-agent-cost')).toEqual({ labels: agent.groups.map((g) => g.key), datasets: [agent.groups.map((g) => g.costUsd)] });
      expect(await chartData(page, 'chart-model-cost')).toEqual({ labels: model.groups.map((g) => g.key), datasets: [model.groups.map((g) => g.costUsd)] });
      // Drawn, not just configured: the canvas has pixels of the bar colour.
      const painted = await page.evaluate(() => {
        const c = document.getElementById('chart-day-cost') as HTMLCanvasElement;
        const px = c.getContext('2d')!.getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < px.length; i += 4) if (px[i] === 0x3d && px[i + 1] === 0x63 && px[i + 2] === 0xdd) n++;
        return n;
      });
      expect(painted).toBeGreaterThan(0);
      // An org admin gets no org picker, and the other org's agent appears nowhere.
      expect(await page.locator('#org-picker').isHidden()).toBe(true);
      expect(await page.content()).not.toContain('TaskGenerator');
      expect(foreign).toEqual([]);

      const shot = artifactPath('usage-dashboard-org-admin.png');
      await page.screenshot({ path: shot, fullPage: true });
      console.log(`usage dashboard screenshot (org admin): ${shot}`);
    } finally {
      await context.close();
    }
  }, 60_000);

  it('shows the operator every org, and one org once picked', async () => {
    const { context, page, foreign } = await open(ADMIN_TOKEN, `from=${USAGE_WINDOW.from}&to=${USAGE_WINDOW.to}`);
    try {
      expect(await page.locator('#scope').textContent()).toBe('operator · all orgs');
      const perOrg = await s.app.inject({ method: 'GET', url: `/admin/usage/api?from=${USAGE_WINDOW.from}&to=${USAGE_WINDOW.toExclusive}&groupBy=org`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
      const orgs = perOrg.json() as { groups: Group[]; total: Group };
      expect(await tableRows(page, 'by-org')).toEqual(orgs.groups.map(row));
      await expectTotals(page, orgs.total);
      for (const org of [s.orgId, orgB]) expect(await page.locator(`#by-org tr[data-key="${org}"]`).count()).toBe(1);

      await page.locator('select[name="org"]').selectOption(orgB);
      await page.getByRole('button', { name: 'Show' }).click();
      await page.locator('#scope', { hasText: `org ${orgB}` }).waitFor();
      await page.locator('body[data-state="ready"]').waitFor();
      const adminB = await s.newKey(orgB, 'org-admin');
      const [day, agent] = [await v1(adminB, 'day'), await v1(adminB, 'agent')];
      await expectTotals(page, day.total);
      expect(await tableRows(page, 'by-day')).toEqual(day.groups.map(row));
      expect(await tableRows(page, 'by-agent')).toEqual(agent.groups.map(row));
      expect(page.url()).toContain(`org=${orgB}`);
      expect(foreign).toEqual([]);

      const shot = artifactPath('usage-dashboard-operator.png');
      await page.screenshot({ path: shot, fullPage: true });
      console.log(`usage dashboard screenshot (operator, one org): ${shot}`);
    } finally {
      await context.close();
    }
  }, 60_000);
});
