import { existsSync } from 'node:fs';
import { chromium, type Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { startStack, type Stack } from './helpers/stack.js';
import { marker, riskJob } from './helpers/ops.js';

const CHROMIUM = '/usr/bin/chromium';
const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'];
const ADMIN_TOKEN = 'adm-browser-4b7d9e1f2a60c8';

describe('Bull Board in a real browser', () => {
  let s: Stack;
  let base: string;
  let browser: Browser | undefined;
  let completedId: string;
  let failedId: string;

  beforeAll(async () => {
    // Never skipped: a machine without the system Chromium fails here, loudly.
    if (!existsSync(CHROMIUM)) throw new Error(`Chromium is missing at ${CHROMIUM}; install it with \`apt-get update && apt-get install -y chromium\``);
    s = await startStack({ ADMIN_TOKEN }, { worker: true });
    base = await s.app.listen({ port: 0, host: '127.0.0.1' });
    const run = async (payload: Record<string, unknown>) => {
      const id = (await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload })).json().id as string;
      const view = (await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}?waitMs=15000`, headers: s.auth })).json();
      return { id, state: view.state as string };
    };
    const ok = await run(riskJob(marker()));
    expect(ok.state).toBe('completed');
    completedId = ok.id;
    const bad = marker();
    // One 400: the job fails for good, and a later retry finds the model healthy.
    s.emulator.script({ status: 400, match: { promptIncludes: bad } });
    const failed = await run(riskJob(bad));
    expect(failed.state).toBe('failed');
    failedId = failed.id;
    browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS, headless: true });
  });
  afterAll(async () => {
    await browser?.close();
    await s?.close();
  });

  it('refuses a browser without credentials', async () => {
    const context = await browser!.newContext();
    try {
      const res = await context.request.get(`${base}/admin/queues`);
      expect(res.status()).toBe(401);
      expect(res.headers()['www-authenticate']).toMatch(/^Basic/);
    } finally {
      await context.close();
    }
  });

  it('logs in with basic auth, shows the completed and the failed job, and retries the failed one', async () => {
    const context = await browser!.newContext({ httpCredentials: { username: 'admin', password: ADMIN_TOKEN } });
    try {
      const page = await context.newPage();
      await page.goto(`${base}/admin/queues`);
      await page.getByRole('link', { name: 'agent-jobs' }).first().click();
      await expect.poll(() => page.url()).toContain('/admin/queues/queue/agent-jobs');

      await page.getByText('COMPLETED', { exact: true }).click();
      await page.getByText(completedId).waitFor({ state: 'visible' });

      await page.getByText('FAILED', { exact: true }).click();
      await page.getByText(failedId).waitFor({ state: 'visible' });
      await page.getByText('Gemini API 400').first().waitFor({ state: 'visible' });

      const card = page.locator('div[class*="card-"]', { has: page.getByText(failedId) }).last();
      await card.locator('button:has(svg.lucide-refresh-cw)').click();
      await page.getByRole('button', { name: 'Confirm' }).click();

      // In Redis: the job left the failed set, ran again and completed on its second attempt.
      await vi.waitFor(async () => expect(await s.runtime.queue.getJobState(failedId), 'retried job to complete').toBe('completed'), { timeout: 20_000, interval: 50 });
      const job = await s.runtime.queue.getJob(failedId);
      expect(job!.attemptsMade).toBe(2);
      expect(await s.runtime.deps.redis.zscore(s.runtime.queue.keys.failed, failedId)).toBeNull();
    } finally {
      await context.close();
    }
  });
});
