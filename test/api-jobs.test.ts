import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startStack, type Stack } from './helpers/stack.js';
import { usageWritten } from './helpers/usage.js';

const riskInput = { startup: { name: 'Acme Robotics', industry: 'robotics', stage: 'seed', description: 'Warehouse picking robots for mid-size retailers' } };

describe('core job path over HTTP', () => {
  let s: Stack;
  beforeAll(async () => {
    s = await startStack({ ALLOWED_MODELS: 'gemini-2.0-flash' }, { worker: true });
  });
  afterAll(async () => s?.close());

  it('runs HTTP -> queue -> worker -> real SDK -> emulator -> result', async () => {
    const post = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: { agent: 'RiskAnalyzer', action: 'analyze_risks', input: riskInput } });
    expect(post.statusCode).toBe(202);
    const { id, state } = post.json();
    expect(typeof id).toBe('string');
    expect(['waiting', 'prioritized']).toContain(state);
    expect(post.headers['x-request-id']).toBeTruthy();

    const got = await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}?waitMs=15000`, headers: s.auth });
    expect(got.statusCode).toBe(200);
    const view = got.json();
    expect(view).toMatchObject({ id, agent: 'RiskAnalyzer', action: 'analyze_risks', state: 'completed', attempts: 1 });
    expect(view.result.success).toBe(true);
    expect(view.result.model).toBe(s.cfg.GEMINI_MODEL_PRO);
    expect(view.result.tokensUsed.input).toBeGreaterThan(0);
    expect(view.result.tokensUsed.output).toBeGreaterThan(0);
    expect(view.result.costUsd).toBeGreaterThan(0);
    expect(Array.isArray(view.result.data.risks)).toBe(true);
    expect(view.finishedAt).toBeTruthy();
    expect(s.emulator.calls().filter((c) => c.kind === 'generate').length).toBeGreaterThanOrEqual(1);

    await usageWritten(s);
    const { rows } = await s.infra.db.pool.query('SELECT state, input_tokens, output_tokens, cost_usd, org_id FROM agent_runs WHERE job_id = $1', [id]);
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ state: 'completed', org_id: s.orgId });
    expect(Number(rows[0].input_tokens)).toBe(view.result.tokensUsed.input);
  });

  it('uses the model named in options', async () => {
    const post = await s.app.inject({
      method: 'POST',
      url: '/v1/jobs',
      headers: s.auth,
      payload: { agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: 's-1' }, options: { model: 'gemini-2.0-flash', priority: 5 } },
    });
    expect(post.statusCode).toBe(202);
    const view = (await s.app.inject({ method: 'GET', url: `/v1/jobs/${post.json().id}?waitMs=15000`, headers: s.auth })).json();
    expect(view.state).toBe('completed');
    expect(view.result.model).toBe('gemini-2.0-flash');
  });

  it('lists agents with JSON Schemas', async () => {
    const res = await s.app.inject({ method: 'GET', url: '/v1/agents', headers: s.auth });
    expect(res.statusCode).toBe(200);
    const names = res.json().agents.map((a: { name: string }) => a.name);
    expect(names).toEqual(expect.arrayContaining(['RiskAnalyzer', 'TaskGenerator', 'DealScorer', 'ProfileExtractor']));
    const risk = res.json().agents.find((a: { name: string }) => a.name === 'RiskAnalyzer');
    const action = risk.actions.find((a: { name: string }) => a.name === 'analyze_risks');
    expect(action.inputSchema.type).toBe('object');
    expect(action.outputSchema.type).toBe('object');
  });

  it('answers health and readiness', async () => {
    expect((await s.app.inject({ method: 'GET', url: '/healthz' })).statusCode).toBe(200);
    const ready = await s.app.inject({ method: 'GET', url: '/readyz' });
    expect(ready.statusCode).toBe(200);
    expect(ready.json().checks).toMatchObject({ redis: 'ok', database: 'ok' });
  });

  it('bulk-enqueues all or nothing', async () => {
    const jobs = Array.from({ length: 25 }, (_, i) => ({ agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: `s-${i}` } }));
    const ok = await s.app.inject({ method: 'POST', url: '/v1/jobs/bulk', headers: s.auth, payload: { jobs } });
    expect(ok.statusCode).toBe(202);
    expect(ok.json().jobs).toHaveLength(25);
  });
});
