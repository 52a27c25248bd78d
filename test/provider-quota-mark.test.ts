import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { agentqPrefix, guardKeys } from '../src/shared/core/queue-keys.js';
import { startStack, type Stack } from './helpers/stack.js';
import { redisUrl } from './helpers/env.js';
import { riskJob } from './helpers/ops.js';
import { until, waitsTimeout, POLL } from './helpers/wait.js';

const PRIMARY = 'gemini-2.5-pro';
const FALLBACK = 'gemini-2.5-flash';
/** The primary of a route without a fallback (dashboard_risk_summary). */
const LONE = 'gemini-2.0-flash';

/**
 * A per-day 429 marks the model spent until its reset (RetryInfo's delay, else midnight Pacific): while the
 * mark lives, routing skips the model without calling it (the fallback serves; with none the job parks,
 * visible as provider_quota, no attempt used); once it expires the model is called again.
 */
describe('provider quota mark: a spent model is skipped until its reset', () => {
  let s: Stack;
  let redis: Redis;
  beforeAll(async () => {
    s = await startStack(
      {
        JOB_ATTEMPTS: '2',
        AGENT_ROUTES: JSON.stringify({
          'RiskAnalyzer:analyze_risks': { primary: PRIMARY, fallback: FALLBACK },
          'RiskAnalyzer:dashboard_risk_summary': { primary: LONE },
        }),
      },
      { worker: true },
    );
    redis = new Redis(redisUrl());
  });
  afterAll(async () => {
    redis?.disconnect();
    await s?.close();
  });

  const markKey = (model: string) => guardKeys.quotaMark(agentqPrefix(s.cfg.QUEUE_PREFIX), `gemini:${model}`);
  const generateCalls = (model: string) => s.emulator.calls().filter((c) => c.kind === 'generate' && c.model === model);
  const post = async (payload: object) => {
    const res = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload });
    expect(res.statusCode).toBe(202);
    return res.json().id as string;
  };
  const view = async (id: string, waitMs = 0) =>
    (await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}${waitMs ? `?waitMs=${waitMs}` : ''}`, headers: s.auth })).json();
  const completed = (id: string) =>
    until(`job ${id} completes`, async () => {
      const v = await view(id, 5000);
      return v.state === 'completed' ? v : undefined;
    });

  it('after a per-day 429 served by the fallback, the next job never calls the primary; after the reset it does', async () => {
    // A short RetryInfo delay stands for the reset, so the test can see the mark expire.
    s.emulator.script({ status: 429, quota: 'per_day', retryAfterS: 2, match: { model: PRIMARY } });
    const first = await completed(await post(riskJob('mark-first')));
    expect(first.result).toMatchObject({ route: 'fallback', model: FALLBACK });
    expect(await redis.pttl(markKey(PRIMARY))).toBeGreaterThan(0);

    const second = await completed(await post(riskJob('mark-second')));
    expect(second.result).toMatchObject({ route: 'fallback', model: FALLBACK });
    expect(second.attempts).toBe(1);
    // Only the first job's 429 reached the primary: the second went straight to the fallback.
    expect(generateCalls(PRIMARY).map((c) => c.status)).toEqual([429]);
    expect(generateCalls(FALLBACK).map((c) => c.status)).toEqual([200, 200]);

    await until('the quota mark expires', async () => (await redis.exists(markKey(PRIMARY))) === 0, 10_000);
    const third = await completed(await post(riskJob('mark-third')));
    expect(third.result).toMatchObject({ route: 'primary', model: PRIMARY });
    expect(generateCalls(PRIMARY).map((c) => c.status)).toEqual([429, 200]);
  }, waitsTimeout(POLL.timeout, POLL.timeout, 10_000, POLL.timeout));

  it('without a fallback, a job on a spent model parks until the reset (provider_quota + eta), no attempt used, no call', async () => {
    s.emulator.script({ status: 429, quota: 'per_day', retryAfterS: 600, match: { model: LONE } });
    const waits = async (id: string) =>
      until(`job ${id} parks for the quota`, async () => {
        const v = await view(id);
        return v.waitingFor?.reason === 'provider_quota' ? v : undefined;
      });
    // The first job's call answers the 429 and sets the mark (and parks it, as before the mark existed).
    const first = await waits(await post({ agent: 'RiskAnalyzer', action: 'dashboard_risk_summary', input: { startupId: 'mark-lone-1' } }));
    expect(first.attempts).toBe(0);
    const ttl = await redis.pttl(markKey(LONE));
    expect(ttl).toBeGreaterThan(590_000);
    // The second is refused by the mark before any call: same reason, an eta at the mark's expiry.
    const second = await waits(await post({ agent: 'RiskAnalyzer', action: 'dashboard_risk_summary', input: { startupId: 'mark-lone-2' } }));
    expect(second.state).toBe('waiting');
    expect(second.attempts).toBe(0);
    expect(Math.abs(Date.parse(second.waitingFor.eta) - (Date.now() + ttl))).toBeLessThan(10_000);
    expect(generateCalls(LONE)).toHaveLength(1);
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout));
});
