import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jobTitle } from '../src/producers/bull-board.js';
import { PARK_AT_MS } from '../src/shared/fair/park.js';
import { startStack, type Stack } from './helpers/stack.js';
import { failJobs, marker, riskJob } from './helpers/ops.js';
import { isSecretField, MASK } from '../src/producers/mask-secrets.js';
import { createRedis } from '../src/shared/infra/redis/connection.js';
import { redisUrl } from './helpers/env.js';

const ADMIN_TOKEN = 'titles-admin-token-0123456789';

const headers = { authorization: `Bearer ${ADMIN_TOKEN}` };

/** One job as the board's JSON API (what its page renders) shows it. */
async function boardJob(s: Stack, status: string, id: string) {
  const res = await s.app.inject({ method: 'GET', url: `/admin/queues/api/queues?activeQueue=agent-jobs&status=${status}&page=1&jobsPerPage=50`, headers });
  expect(res.statusCode).toBe(200);
  return res.json().queues.find((q: { name: string }) => q.name === 'agent-jobs').jobs.find((j: { id: string }) => j.id === id);
}

describe('Bull Board job titles', () => {
  let s: Stack;
  beforeAll(async () => {
    // No worker: nothing registers a dispatch buffer, so enqueued jobs stay parked for the dispatcher.
    s = await startStack({ ADMIN_TOKEN });
  });
  afterAll(async () => s?.close());

  it('shows a parked job as waiting for dispatch, with its org, instead of a far-future delay', async () => {
    const payload = { agent: 'RiskAnalyzer', action: 'analyze_risks', input: { startup: { name: 'Title Co' } }, options: { model: 'gemini-2.5-flash' } };
    const { id } = (await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload })).json();
    const job = await s.runtime.queue.getJob(id);
    const res = await s.app.inject({
      method: 'GET',
      url: '/admin/queues/api/queues?activeQueue=agent-jobs&status=delayed&page=1&jobsPerPage=10',
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    expect(res.statusCode).toBe(200);
    const queue = res.json().queues.find((q: { name: string }) => q.name === 'agent-jobs');
    const shown = queue.jobs.find((j: { id: string }) => j.id === id);
    expect(shown.name).toBe(`[waiting for dispatch] RiskAnalyzer:analyze_risks · org ${job!.data.orgId} · gemini-2.5-flash`);
  });

  it('titles other jobs with org and agent:action only', () => {
    const now = Date.now();
    expect(jobTitle({ name: 'DealScorer:pipeline_summary', timestamp: now, delay: 5000, data: { orgId: 'acme' } })).toBe('DealScorer:pipeline_summary · org acme');
    expect(jobTitle({ name: 'x', timestamp: now, delay: PARK_AT_MS - now, data: {} })).toBe('[waiting for dispatch] x');
    // A result names the model that answered (a fallback may differ from the one asked for).
    const returnvalue = { model: 'gemini-2.5-flash', costUsd: 0.0001234, cacheHit: 'semantic' };
    expect(jobTitle({ name: 'a:b', data: { orgId: 'acme', model: 'gemini-2.5-pro' }, returnvalue })).toBe('a:b · org acme · gemini-2.5-flash · $0.000123 · cache semantic');
  });

  it('masks every key, token and authorization in the data it shows, and keeps token counts', async () => {
    const googleKey = `AIza${'x7Qz'.repeat(8)}abc`;
    const agentqKey = s.apiKey;
    const input = {
      startup: { name: 'Masked Co', description: `pasted by mistake: ${googleKey} and ${agentqKey}` },
      apiKey: 'sk-live-should-not-show-0123456789',
      headers: { Authorization: 'Bearer abcdefghijklmnop', 'x-api-key': 'k-1234567890' },
      oauth: { refresh_token: 'r-abcdef', accessToken: 'a-abcdef' },
      limits: { maxOutputTokens: 512, tokenCount: 7 },
    };
    const conn = createRedis(redisUrl(), 'worker');
    let id: string;
    try {
      [{ id }] = (await failJobs(s.runtime.queue, conn, s.cfg.QUEUE_PREFIX, [{ data: { orgId: s.orgId, input }, reason: 'Gemini API 503: down' }])) as Array<{ id: string }>;
    } finally {
      conn.disconnect();
    }
    for (const shown of [await boardJob(s, 'failed', id), (await s.app.inject({ method: 'GET', url: `/admin/queues/api/queues/agent-jobs/${id}`, headers })).json().job]) {
      const text = JSON.stringify(shown.data);
      for (const secret of [googleKey, agentqKey, 'sk-live-should-not-show', 'abcdefghijklmnop', 'k-1234567890', 'r-abcdef', 'a-abcdef']) expect(text).not.toContain(secret);
      expect(shown.data.input).toEqual({
        startup: { name: 'Masked Co', description: `pasted by mistake: ${MASK} and ${MASK}` },
        apiKey: MASK,
        headers: { Authorization: MASK, 'x-api-key': MASK },
        oauth: { refresh_token: MASK, accessToken: MASK },
        limits: { maxOutputTokens: 512, tokenCount: 7 },
      });
    }
    // The job itself is untouched, and the board never writes a mask back over a secret.
    expect((await s.runtime.queue.getJob(id))!.data.input).toEqual(input);
    const update = await s.app.inject({ method: 'PATCH', url: `/admin/queues/api/queues/agent-jobs/${id}/update-data`, headers, payload: { jobData: { orgId: s.orgId, input: { apiKey: MASK } } } });
    expect(update.statusCode).toBe(400);
    expect(update.json().error).toMatch(/masked/);
    expect((await s.runtime.queue.getJob(id))!.data.input).toEqual(input);
  });
});

describe('Bull Board for an AI queue: cost and cache level of finished jobs', () => {
  let s: Stack;
  beforeAll(async () => {
    s = await startStack({ ADMIN_TOKEN }, { worker: true });
  });
  afterAll(async () => s?.close());

  const run = async (payload: Record<string, unknown>) => {
    const { id } = (await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload })).json();
    const view = (await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}?waitMs=15000`, headers: s.auth })).json();
    expect(view.state).toBe('completed');
    return id as string;
  };

  it('titles a finished job with the model that answered, its cost and its cache level', async () => {
    const payload = riskJob(marker());
    const first = await run(payload);
    const result = (await s.runtime.queue.getJob(first))!.returnvalue;
    expect(result.costUsd).toBeGreaterThan(0);
    expect((await boardJob(s, 'completed', first)).name).toBe(`RiskAnalyzer:analyze_risks · org ${s.orgId} · ${result.model} · $${result.costUsd.toFixed(6)} · cache miss`);

    // The same request again is answered from the result cache: no cost, and the level that served it.
    const again = await run(payload);
    const cached = (await s.runtime.queue.getJob(again))!.returnvalue;
    expect(cached.cacheHit).toMatch(/^(l1|l2|semantic)$/);
    expect((await boardJob(s, 'completed', again)).name).toBe(`RiskAnalyzer:analyze_risks · org ${s.orgId} · ${cached.model} · $${cached.costUsd.toFixed(6)} · cache ${cached.cacheHit}`);
  });

  it('tells secret field names from token counts', () => {
    for (const name of ['apiKey', 'api_key', 'x-api-key', 'API_KEY', 'token', 'accessToken', 'refresh_token', 'Authorization', 'password', 'clientSecret', 'privateKey', 'cookie', 'credentials']) expect(isSecretField(name), name).toBe(true);
    for (const name of ['tokensUsed', 'maxOutputTokens', 'inputTokens', 'tokenCount', 'key', 'idempotencyKey', 'cacheKey', 'keywords', 'author']) expect(isSecretField(name), name).toBe(false);
  });
});
