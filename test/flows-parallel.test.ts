import { randomUUID } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createAgentqClient } from '../src/producers/client/client.js';
import { startStack, type Stack } from './helpers/stack.js';
import { usageWritten } from './helpers/usage.js';

const startup = (name: string) => ({ name, industry: 'logistics', stage: 'seed', description: 'Route planning for regional couriers' });

describe('parallel fan-out flows', () => {
  let s: Stack;
  beforeAll(async () => {
    s = await startStack({ ALLOWED_MODELS: 'gemini-2.0-flash,gemini-2.0-flash-lite' }, { worker: true });
  });
  afterEach(() => s.emulator.clearFaults());
  afterAll(async () => s?.close());

  const getFlow = async (id: string, auth = s.auth) => s.app.inject({ method: 'GET', url: `/v1/flows/${id}?waitMs=20000`, headers: auth });

  it('settles like Promise.allSettled: a child that fails for good is reported, not fatal', async () => {
    // A 400 is not retryable: the risk child fails for good on its first attempt.
    s.emulator.script({ status: 400, message: 'scripted bad request', match: { promptIncludes: 'Analyse the risks of this startup.' }, times: -1 });
    const tag = randomUUID().slice(0, 8);
    const tasks = [
      { agent: 'RiskAnalyzer', action: 'analyze_risks', input: { startup: startup(`Doomed ${tag}`) } },
      { agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: `a-${tag}` } },
      { agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: `b-${tag}` } },
      { agent: 'TaskGenerator', action: 'suggest_next_actions', input: { startupId: `c-${tag}`, limit: 2 } },
    ];
    const post = await s.app.inject({ method: 'POST', url: '/v1/flows/parallel', headers: s.auth, payload: { tasks } });
    expect(post.statusCode).toBe(202);
    const { id } = post.json();

    const res = await getFlow(id);
    expect(res.statusCode).toBe(200);
    const view = res.json();
    expect(view).toMatchObject({ id, kind: 'parallel', state: 'completed' });
    // Flow children are jobs of the org like any other: listed by GET /v1/jobs (the one enqueue path indexes them).
    const listed = (await s.app.inject({ method: 'GET', url: '/v1/jobs', headers: s.auth })).json() as Array<{ id: string }>;
    for (const child of view.children as Array<{ id: string }>) expect(listed.map((j) => j.id)).toContain(child.id);
    const { results, totalCostUsd, totalDurationMs } = view.result;
    expect(Object.keys(results).sort()).toEqual(['DealScorer:pipeline_summary', 'DealScorer:pipeline_summary#2', 'RiskAnalyzer:analyze_risks', 'TaskGenerator:suggest_next_actions']);
    expect(results['RiskAnalyzer:analyze_risks']).toEqual({
      success: false,
      error: expect.stringContaining('scripted bad request'),
      tokensUsed: { input: 0, output: 0 },
      costUsd: 0,
      durationMs: 0,
      model: s.cfg.GEMINI_MODEL_PRO,
    });
    // The two results of the same action are both there, each from its own input.
    expect(results['DealScorer:pipeline_summary'].data.startupId).toBe(`a-${tag}`);
    expect(results['DealScorer:pipeline_summary#2'].data.startupId).toBe(`b-${tag}`);
    expect(results['TaskGenerator:suggest_next_actions'].success).toBe(true);
    expect(results['TaskGenerator:suggest_next_actions'].data.actions.length).toBeLessThanOrEqual(2);
    const okCost = ['DealScorer:pipeline_summary', 'DealScorer:pipeline_summary#2', 'TaskGenerator:suggest_next_actions'].reduce((sum, k) => sum + results[k].costUsd, 0);
    expect(okCost).toBeGreaterThan(0);
    expect(totalCostUsd).toBeCloseTo(okCost, 10);
    expect(totalDurationMs).toBeGreaterThan(0);

    // Children are real agent jobs: each has its own state, visible through the normal job API.
    expect(view.children).toHaveLength(4);
    expect(view.children.map((c: { key: string }) => c.key)).toEqual(['RiskAnalyzer:analyze_risks', 'DealScorer:pipeline_summary', 'DealScorer:pipeline_summary#2', 'TaskGenerator:suggest_next_actions']);
    expect(view.children.map((c: { state: string }) => c.state)).toEqual(['failed', 'completed', 'completed', 'completed']);
    const failedJob = (await s.app.inject({ method: 'GET', url: `/v1/jobs/${view.children[0].id}`, headers: s.auth })).json();
    expect(failedJob).toMatchObject({ state: 'failed', agent: 'RiskAnalyzer' });
    const dealJob = (await s.app.inject({ method: 'GET', url: `/v1/jobs/${view.children[1].id}`, headers: s.auth })).json();
    expect(dealJob.result).toEqual(results['DealScorer:pipeline_summary']);
  });

  it('a child that fails for good after billed answers reports what its attempts cost, the sum of its ledger rows', async () => {
    // Malformed JSON: the model answered (billed), the attempt fails retryably, and so do the others: failed for good.
    s.emulator.script({ malformed: true, match: { promptIncludes: 'Analyse the risks of this startup.' }, times: -1 });
    const tag = randomUUID().slice(0, 8);
    const tasks = [
      { agent: 'RiskAnalyzer', action: 'analyze_risks', input: { startup: startup(`Billed ${tag}`) } },
      { agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: `billed-${tag}` } },
    ];
    const post = await s.app.inject({ method: 'POST', url: '/v1/flows/parallel', headers: s.auth, payload: { tasks } });
    expect(post.statusCode).toBe(202);
    const view = (await getFlow(post.json().id)).json();
    expect(view.state).toBe('completed');
    const { results, totalCostUsd } = view.result;
    const failedId = view.children[0].id as string;
    expect(view.children.map((c: { state: string }) => c.state)).toEqual(['failed', 'completed']);

    await usageWritten(s);
    const rows = (await s.infra.db.pool.query<{ state: string; cost_usd: string }>('SELECT state, cost_usd FROM agent_runs WHERE job_id = $1', [failedId])).rows;
    // Every attempt was billed for its malformed answer: 0 before, as if the child had cost nothing.
    expect(rows.length).toBe(s.cfg.JOB_ATTEMPTS);
    expect(rows.every((r) => r.state === 'failed' && Number(r.cost_usd) > 0)).toBe(true);
    const ledger = rows.reduce((sum, r) => sum + Number(r.cost_usd), 0);
    expect(results['RiskAnalyzer:analyze_risks']).toMatchObject({ success: false, costUsd: expect.closeTo(ledger, 8) });
    expect(totalCostUsd).toBeCloseTo(ledger + results['DealScorer:pipeline_summary'].costUsd, 8);
  });

  it('validates every task before adding anything, naming tasks.N paths', async () => {
    const before = await s.runtime.queue.getJobCounts('waiting', 'active', 'completed', 'failed', 'delayed', 'prioritized');
    const res = await s.app.inject({
      method: 'POST',
      url: '/v1/flows/parallel',
      headers: s.auth,
      payload: {
        tasks: [
          { agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: 'ok' } },
          { agent: 'RiskAnalyzer', action: 'analyze_risks', input: { startup: { industry: 'x' } } },
          { agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: 'ok' }, options: { idempotencyKey: 'k' } },
        ],
      },
    });
    expect(res.statusCode).toBe(400);
    const paths = res.json().details.map((d: { path: string }) => d.path);
    expect(paths).toContain('tasks.1.input.startup.name');
    expect(paths).toContain('tasks.2.options.idempotencyKey');
    expect(await s.runtime.queue.getJobCounts('waiting', 'active', 'completed', 'failed', 'delayed', 'prioritized')).toEqual(before);

    const empty = await s.app.inject({ method: 'POST', url: '/v1/flows/parallel', headers: s.auth, payload: { tasks: [] } });
    expect(empty.statusCode).toBe(400);
    const tooMany = Array.from({ length: 51 }, () => ({ agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: 'x' } }));
    const big = await s.app.inject({ method: 'POST', url: '/v1/flows/parallel', headers: s.auth, payload: { tasks: tooMany } });
    expect(big.statusCode).toBe(400);
    expect(big.json().details[0].path).toBe('tasks');
  });

  it('applies flow-level options to every child unless the task sets its own', async () => {
    const tag = randomUUID().slice(0, 8);
    const post = await s.app.inject({
      method: 'POST',
      url: '/v1/flows/parallel',
      headers: s.auth,
      payload: {
        tasks: [
          { agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: `m-${tag}` } },
          { agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: `n-${tag}` }, options: { model: 'gemini-2.0-flash-lite' } },
        ],
        options: { model: 'gemini-2.0-flash' },
      },
    });
    expect(post.statusCode).toBe(202);
    const view = (await getFlow(post.json().id)).json();
    expect(view.state).toBe('completed');
    expect(view.result.results['DealScorer:pipeline_summary'].model).toBe('gemini-2.0-flash');
    expect(view.result.results['DealScorer:pipeline_summary#2'].model).toBe('gemini-2.0-flash-lite');
  });

  it('runs the dashboard preset and maps its children into risks, nextActions and pipeline', async () => {
    const startupId = `dash-${randomUUID().slice(0, 8)}`;
    const post = await s.app.inject({ method: 'POST', url: '/v1/flows/dashboard', headers: s.auth, payload: { startupId } });
    expect(post.statusCode).toBe(202);
    const view = (await getFlow(post.json().id)).json();
    expect(view).toMatchObject({ kind: 'dashboard', state: 'completed' });
    const r = view.result;
    expect(Object.keys(r.results).sort()).toEqual(['DealScorer:pipeline_summary', 'RiskAnalyzer:dashboard_risk_summary', 'TaskGenerator:suggest_next_actions']);
    expect(Object.values(r.results).every((x) => (x as { success: boolean }).success)).toBe(true);
    expect(r.risks).toEqual(r.results['RiskAnalyzer:dashboard_risk_summary'].data);
    expect(r.risks.startupId).toBe(startupId);
    expect(r.nextActions).toEqual(r.results['TaskGenerator:suggest_next_actions'].data.actions);
    expect(r.nextActions.length).toBeGreaterThan(0);
    expect(r.nextActions.length).toBeLessThanOrEqual(5);
    expect(r.pipeline).toEqual(r.results['DealScorer:pipeline_summary'].data);
    expect(r.pipeline.startupId).toBe(startupId);

    const bad = await s.app.inject({ method: 'POST', url: '/v1/flows/dashboard', headers: s.auth, payload: {} });
    expect(bad.statusCode).toBe(400);
    expect(bad.json().details[0].path).toBe('startupId');
    const unknown = await s.app.inject({ method: 'POST', url: '/v1/flows/nope', headers: s.auth, payload: { startupId } });
    expect(unknown.statusCode).toBe(404);
  });

  it('answers 404 for another org, and for ids that are not flows', async () => {
    const post = await s.app.inject({
      method: 'POST',
      url: '/v1/flows/parallel',
      headers: s.auth,
      payload: { tasks: [{ agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: 'x-org' } }] },
    });
    const { id } = post.json();
    const other = { authorization: `Bearer ${await s.newKey()}` };
    const res = await s.app.inject({ method: 'GET', url: `/v1/flows/${id}`, headers: other });
    expect(res.statusCode).toBe(404);
    expect(res.json()).toEqual({ error: `flow "${id}" not found` });
    expect((await s.app.inject({ method: 'GET', url: `/v1/pipelines/runs/${id}`, headers: s.auth })).statusCode).toBe(404);
    expect((await s.app.inject({ method: 'GET', url: '/v1/flows/flow-missing', headers: s.auth })).statusCode).toBe(404);
    // Still the owner's to read.
    expect((await getFlow(id)).json().state).toBe('completed');
  });

  it('is reachable from the typed client: runFlow waits until every task settled', async () => {
    const baseUrl = await s.app.listen({ host: '127.0.0.1', port: 0 });
    const client = createAgentqClient({ baseUrl, apiKey: s.apiKey });
    const tag = randomUUID().slice(0, 8);
    const view = await client.runFlow(
      [
        { agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: `cl-${tag}` } },
        { agent: 'TaskGenerator', action: 'suggest_next_actions', input: { startupId: `cl-${tag}`, limit: 1 } },
      ],
      { timeoutMs: 20_000, defaults: { priority: 3 } },
    );
    expect(view.state).toBe('completed');
    const results = (view.result as { results: Record<string, { success: boolean }> }).results;
    expect(Object.keys(results).sort()).toEqual(['DealScorer:pipeline_summary', 'TaskGenerator:suggest_next_actions']);
    expect(Object.values(results).every((r) => r.success)).toBe(true);
    const child = await s.runtime.queue.getJob(view.children[0].id);
    expect(child!.opts.priority).toBe(3);
  });
});
