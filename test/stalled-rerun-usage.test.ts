import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createPricing } from '../src/shared/infra/llm/pricing.js';
import { createOrgStore } from '../src/shared/infra/db/orgs.js';
import { createQuotaChecker } from '../src/shared/infra/db/quotas.js';
import { createStalledCheck } from './helpers/stalled-check.js';
import { startStack, type Stack } from './helpers/stack.js';
import { usageWritten } from './helpers/usage.js';
import { POLL } from './helpers/wait.js';

/**
 * A job whose lock lapsed while its attempt ran (an event loop stall, a worker killed after its model call):
 * BullMQ's stalled check puts it back in the wait list and it runs again under the same attempt number
 * (`attemptsMade` unchanged), calling Gemini again. Gemini bills both calls; the ledger must hold both.
 */
describe('a second run of the same attempt after a stall', () => {
  let s!: Stack;
  let checks: ReturnType<typeof createStalledCheck>;

  beforeAll(async () => {
    // Room for two runs: the worker that still runs the stalled attempt fetches the job again.
    s = await startStack({ WORKER_CONCURRENCY: '2' }, { worker: true, modelGate: true });
    checks = createStalledCheck(s.cfg.REDIS_URL!, s.cfg.QUEUE_PREFIX);
  });
  afterAll(async () => {
    await checks?.close();
    await s?.close();
  });

  it('both runs are billed: each has its usage row, and /v1/usage and the monthly spend count both calls', async () => {
    const name = 'Twice Billed Stall Inc';
    const held = s.gate!.hold(name, 2);
    const input = { startup: { name, industry: 'robotics', stage: 'seed', description: 'A job whose lock lapses mid-call' } };
    const res = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: { agent: 'RiskAnalyzer', action: 'analyze_risks', input } });
    expect(res.statusCode).toBe(202);
    const id = res.json().id as string;

    await vi.waitFor(() => expect(held.count()).toBe(1), POLL);
    await checks.stall(s.runtime.deps.cells[0].queue, id);
    // The same attempt fetched again: its run calls the model beside the first run's call.
    await held.arrived;
    held.release();

    const view = (await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}?waitMs=20000`, headers: s.auth })).json();
    expect(view).toMatchObject({ id, state: 'completed' });
    const calls = () => s.emulator.calls().filter((c) => c.kind === 'generate' || c.kind === 'stream');
    await vi.waitFor(() => expect(calls().filter((c) => c.status === 200)).toHaveLength(2), POLL);
    // Both runs ended (the first one's completion refused: its lock is gone) and appended their rows.
    await vi.waitFor(async () => {
      await usageWritten(s);
      const n = (await s.infra.db.pool.query('SELECT count(*)::int AS n FROM agent_runs WHERE job_id = $1', [id])).rows[0].n;
      expect(n).toBe(2);
    }, POLL);

    const rows = (await s.infra.db.pool.query('SELECT attempt, state, input_tokens, output_tokens, cost_usd FROM agent_runs WHERE job_id = $1', [id])).rows;
    expect(rows.map((r) => [r.attempt, r.state])).toEqual([
      [1, 'completed'],
      [1, 'completed'],
    ]);
    const billed = calls().reduce((n, c) => n + (c.promptTokens ?? 0), 0);
    expect(rows.reduce((n, r) => n + r.input_tokens, 0)).toBe(billed);
    const pricing = createPricing();
    const cost = calls().reduce((n, c) => n + pricing.cost(c.model, { input: c.promptTokens!, output: c.outputTokens! + (c.thoughtsTokens ?? 0), cached: c.cachedTokens ?? 0 }).costUsd, 0);
    const rowCost = rows.reduce((n, r) => n + Number(r.cost_usd), 0);
    expect(rowCost).toBeCloseTo(cost, 7);

    const usage = (await s.app.inject({ method: 'GET', url: '/v1/usage?groupBy=agent', headers: s.auth })).json();
    const group = usage.groups.find((g: { key: string }) => g.key === 'RiskAnalyzer');
    expect(group).toMatchObject({ jobs: 1 });
    expect(group.tokens.input).toBe(billed);
    expect(group.costUsd).toBeCloseTo(cost, 7);
    // A monthly budget above the larger call's cost, below both calls': reached only when both are counted.
    const one = Math.max(...rows.map((r) => Number(r.cost_usd)));
    await createOrgStore({ pool: s.infra.db.pool }).upsert({ id: s.orgId, monthlyBudgetUsd: Number(((one + rowCost) / 2).toFixed(8)) });
    expect(await createQuotaChecker({ pool: s.infra.db.pool }).check(s.orgId)).toMatchObject({ allowed: false });
  });
});
