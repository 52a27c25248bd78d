import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LlmError, nextPacificMidnight } from '../src/shared/infra/llm/llm-errors.js';
import { defaultErrorFilter } from '../src/shared/limits/circuit-breaker.js';
import { startStack, type Stack } from './helpers/stack.js';
import { usageWritten } from './helpers/usage.js';
import { riskJob } from './helpers/ops.js';
import { until, waitsTimeout, POLL } from './helpers/wait.js';
import { createPricing } from '../src/shared/infra/llm/pricing.js';

/**
 * Gemini 429s through the real SDK against the emulator: a per-minute limit reschedules the job after
 * RetryInfo's delay without using an attempt and pauses the model for every org; a per-day quota goes to the
 * route's fallback, or parks the job until the quota's reset, visible in `waitingFor`.
 */
describe('provider 429: reschedule, never fail', () => {
  let s: Stack;
  let routed: Stack;
  beforeAll(async () => {
    [s, routed] = await Promise.all([
      // Two models nothing else configures: each case scripts its own model's quota.
      startStack({ JOB_ATTEMPTS: '2', ALLOWED_MODELS: 'gemini-2.0-flash,gemini-2.0-flash-lite' }, { worker: true }),
      startStack(
        { JOB_ATTEMPTS: '2', AGENT_ROUTES: JSON.stringify({ 'RiskAnalyzer:analyze_risks': { primary: 'gemini-2.5-pro', fallback: 'gemini-2.5-flash' } }) },
        { worker: true },
      ),
    ]);
  });
  afterAll(async () => {
    await Promise.all([s?.close(), routed?.close()]);
  });

  async function post(stack: Stack, marker: string, model: string, auth = stack.auth) {
    const res = await stack.app.inject({ method: 'POST', url: '/v1/jobs', headers: auth, payload: { ...riskJob(marker), options: { model } } });
    expect(res.statusCode).toBe(202);
    return res.json().id as string;
  }
  const view = async (stack: Stack, id: string, waitMs = 0, auth = stack.auth) =>
    (await stack.app.inject({ method: 'GET', url: `/v1/jobs/${id}${waitMs ? `?waitMs=${waitMs}` : ''}`, headers: auth })).json();
  const runs = async (stack: Stack, id: string) => {
    await usageWritten(stack);
    return (await stack.infra.db.pool.query('SELECT attempt, state, model FROM agent_runs WHERE job_id = $1 ORDER BY attempt', [id])).rows;
  };

  it('per-minute: waits RetryInfo.retryDelay, then succeeds on the same attempt (no attempt used, no failed run)', async () => {
    const model = 'gemini-2.5-flash';
    s.emulator.script({ status: 429, quota: 'per_minute', retryAfterS: 0.3, match: { promptIncludes: 'minute-once', model } });
    const id = await post(s, 'minute-once', model);
    const done = await until('the job completes', async () => {
      const v = await view(s, id, 5000);
      return v.state === 'completed' ? v : undefined;
    });
    expect(done.attempts).toBe(1);
    expect((await runs(s, id)).map((r) => r.state)).toEqual(['completed']);
    const calls = s.emulator.calls().filter((c) => c.model === model && c.kind === 'generate');
    expect(calls.map((c) => c.status)).toEqual([429, 200]);
    // The retry came no sooner than the delay Gemini asked for.
    expect(calls[1].at - calls[0].at).toBeGreaterThanOrEqual(300);
  }, waitsTimeout(POLL.timeout, POLL.timeout));

  it('per-minute: the model pauses for every org until the delay is over, shown as provider_rate_limited', async () => {
    const model = 'gemini-2.0-flash';
    s.emulator.script({ status: 429, quota: 'per_minute', retryAfterS: 600, match: { model } });
    const first = await post(s, 'minute-long', model);
    const held = await until('the first job waits for the provider', async () => {
      const v = await view(s, first);
      return v.waitingFor?.reason === 'provider_rate_limited' ? v : undefined;
    });
    expect(held.state).toBe('waiting');
    expect(Date.parse(held.waitingFor.eta) - Date.now()).toBeGreaterThan(500_000);
    // Another org's job on the same model is held by the dispatcher: it never reaches Gemini.
    const otherOrgKey = await s.newKey();
    const other = await post(s, 'minute-other', model, { authorization: `Bearer ${otherOrgKey}` });
    const otherView = await until('the other org waits for the model', async () => {
      const v = await view(s, other, 0, { authorization: `Bearer ${otherOrgKey}` });
      return v.waitingFor?.reason === 'provider_rate_limited' ? v : undefined;
    });
    expect(otherView.attempts).toBe(0);
    expect(s.emulator.calls().filter((c) => c.model === model)).toHaveLength(1);
    expect(await runs(s, first)).toEqual([]);
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout));

  it('per-day without a fallback: parked until the quota resets (midnight Pacific), visible as provider_quota', async () => {
    const model = 'gemini-2.0-flash-lite';
    // No RetryInfo: the wait is until the daily reset (with one, it is RetryInfo's delay: provider-quota-mark.test.ts).
    s.emulator.script({ status: 429, quota: 'per_day', match: { model } });
    const before = Date.now();
    const id = await post(s, 'day-parked', model);
    const held = await until('the job is parked for the daily quota', async () => {
      const v = await view(s, id);
      return v.waitingFor?.reason === 'provider_quota' ? v : undefined;
    });
    const after = Date.now();
    expect(held.state).toBe('waiting');
    // The worker turns the reset into a delay by its clock (reset - now) and the dispatcher counts that delay from
    // Redis's clock when its script runs, a moment later: the ETA is the reset, late by at most the time between
    // the two (here within the test's own span), early by no more than a millisecond's rounding.
    const late = Date.parse(held.waitingFor.eta) - nextPacificMidnight();
    expect(late).toBeGreaterThanOrEqual(-2);
    expect(late).toBeLessThanOrEqual(after - before + 2);
    expect(held.attempts).toBe(0);
    expect(await runs(s, id)).toEqual([]);
  }, waitsTimeout(POLL.timeout, POLL.timeout));

  it('a provider 429 is a quota, not an outage: the breaker ignores it (the model block does the waiting)', () => {
    expect(defaultErrorFilter(new LlmError('ERATELIMIT', 'x', { status: 429 }))).toBe(true);
    expect(defaultErrorFilter(new LlmError('EQUOTAEXHAUSTED', 'x', { status: 429 }))).toBe(true);
    expect(defaultErrorFilter(new LlmError('EPROVIDER', 'x', { status: 503 }))).toBe(false);
  });

  it("a primary refused (billed) then a fallback's per-minute 429: the delayed run's paid call is a 'delayed' row of its own, beside the attempt's, and /v1/usage counts it once", async () => {
    const marker = 'billed-then-delayed';
    routed.emulator.script([
      { refuse: { finishReason: 'SAFETY' }, match: { model: 'gemini-2.5-pro', promptIncludes: marker } },
      { status: 429, quota: 'per_minute', retryAfterS: 0.3, match: { model: 'gemini-2.5-flash', promptIncludes: marker } },
    ]);
    const before = routed.emulator.calls().length;
    const res = await routed.app.inject({ method: 'POST', url: '/v1/jobs', headers: routed.auth, payload: riskJob(marker) });
    const id = res.json().id as string;
    const done = await until('the job completes', async () => {
      const v = await view(routed, id, 5000);
      return v.state === 'completed' ? v : undefined;
    });
    // The delay used no attempt: the same attempt ran again, and its primary answered.
    expect(done.attempts).toBe(1);
    expect(done.result).toMatchObject({ route: 'primary', model: 'gemini-2.5-pro' });
    const calls = routed.emulator.calls().slice(before).filter((c) => c.kind === 'generate');
    expect(calls.map((c) => [c.model, c.status, c.fault ?? ''])).toEqual([
      ['gemini-2.5-pro', 200, 'refuse:SAFETY'],
      ['gemini-2.5-flash', 429, 'status:429'],
      ['gemini-2.5-pro', 200, ''],
    ]);
    const [refused, , served] = calls;
    await usageWritten(routed);
    const rows = (await routed.infra.db.pool.query('SELECT * FROM agent_runs WHERE job_id = $1 ORDER BY created_at', [id])).rows;
    const pricing = createPricing();
    const billed = (c: typeof refused) => pricing.cost('gemini-2.5-pro', { input: c.promptTokens!, output: c.outputTokens! + (c.thoughtsTokens ?? 0), cached: c.cachedTokens ?? 0 }).costUsd;
    expect(rows).toMatchObject([
      { attempt: 1, state: 'delayed', model: 'gemini-2.5-pro', input_tokens: refused.promptTokens, output_tokens: 0, error: 'provider_rate_limited' },
      { attempt: 1, part: '', state: 'completed', model: 'gemini-2.5-pro', input_tokens: served.promptTokens, output_tokens: served.outputTokens! + (served.thoughtsTokens ?? 0) },
    ]);
    expect(rows[0].part).not.toBe('');
    expect(Number(rows[0].cost_usd)).toBeGreaterThan(0);
    expect(Number(rows[0].cost_usd)).toBeCloseTo(billed(refused), 7);
    expect(Number(rows[1].cost_usd)).toBeCloseTo(billed(served), 7);
    // /v1/usage sums every row of the org (this job's two, and any other's) and counts each job once.
    const all = (await routed.infra.db.pool.query('SELECT job_id, job_ts, cost_usd, input_tokens FROM agent_runs WHERE org_id = $1', [routed.orgId])).rows;
    const usage = (await routed.app.inject({ method: 'GET', url: '/v1/usage?groupBy=model', headers: routed.auth })).json();
    expect(usage.total.costUsd).toBeCloseTo(all.reduce((n, r) => n + Number(r.cost_usd), 0), 7);
    expect(usage.total.tokens.input).toBe(all.reduce((n, r) => n + r.input_tokens, 0));
    expect(usage.total.jobs).toBe(new Set(all.map((r) => `${r.job_id}/${r.job_ts}`)).size);
  }, waitsTimeout(POLL.timeout, POLL.timeout));

  it('per-day with a fallback route: the fallback model serves the job at once', async () => {
    routed.emulator.script({ status: 429, quota: 'per_day', retryAfterS: 30, match: { model: 'gemini-2.5-pro' }, times: -1 });
    const before = routed.emulator.calls().length;
    const res = await routed.app.inject({ method: 'POST', url: '/v1/jobs', headers: routed.auth, payload: riskJob('day-fallback') });
    const id = res.json().id as string;
    const done = await until('the job completes', async () => {
      const v = await view(routed, id, 5000);
      return v.state === 'completed' ? v : undefined;
    });
    expect(done.result).toMatchObject({ route: 'fallback', model: 'gemini-2.5-flash' });
    expect(done.attempts).toBe(1);
    const calls = routed.emulator.calls().slice(before).filter((c) => c.kind === 'generate');
    expect(calls.map((c) => [c.model, c.status])).toEqual([
      ['gemini-2.5-pro', 429],
      ['gemini-2.5-flash', 200],
    ]);
  });
});
