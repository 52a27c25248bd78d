import { Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { jobRequestSchema } from '../src/shared/queue/job-request.js';
import { startStack, type Stack } from './helpers/stack.js';

/** No worker here: every job the API accepts stays in the queue, so counts are exact. */
describe('API contract without a worker', () => {
  let s: Stack;
  let queue: Queue;
  beforeAll(async () => {
    s = await startStack({ BODY_LIMIT_BYTES: String(150 * 1024) });
    queue = new Queue('agent-jobs', { connection: { url: s.cfg.REDIS_URL }, prefix: s.cfg.QUEUE_PREFIX });
  });
  afterAll(async () => {
    await queue?.close();
    await s?.close();
  });

  const post = (payload: unknown, headers: Record<string, string> = s.auth) => s.app.inject({ method: 'POST', url: '/v1/jobs', headers, payload: payload as object });
  const valid = { agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: 'st-1' } };

  it('rejects missing, unknown and revoked keys with 401', async () => {
    expect((await post(valid, {})).statusCode).toBe(401);
    const unknown = await post(valid, { authorization: 'Bearer aq_nope_nope' });
    expect(unknown.statusCode).toBe(401);
    expect(unknown.json().error).toMatch(/invalid or revoked/);
    const { createApiKeyStore } = await import('../src/shared/infra/db/api-keys.js');
    const store = createApiKeyStore({ pool: s.infra.db.pool });
    const created = await store.create({ orgId: s.orgId });
    expect((await post(valid, { authorization: `Bearer ${created.key}` })).statusCode).toBe(202);
    await store.revoke(created.id);
    expect((await post(valid, { authorization: `Bearer ${created.key}` })).statusCode).toBe(401);
  });

  it('hides other orgs’ jobs as 404, the same as missing ones', async () => {
    const { id } = (await post(valid)).json();
    const other = { authorization: `Bearer ${await s.newKey()}` };
    const foreign = await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}`, headers: other });
    const missing = await s.app.inject({ method: 'GET', url: `/v1/jobs/does-not-exist`, headers: other });
    expect(foreign.statusCode).toBe(404);
    expect(foreign.json()).toEqual(missing.json());
    expect((await s.app.inject({ method: 'DELETE', url: `/v1/jobs/${id}`, headers: other })).statusCode).toBe(404);
    expect((await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}`, headers: s.auth })).statusCode).toBe(200);
  });

  it('validates input against the agent schema with field paths, enqueueing nothing', async () => {
    const before = await queue.count();
    const res = await post({ agent: 'RiskAnalyzer', action: 'analyze_risks', input: { startup: { industry: 5 } } });
    expect(res.statusCode).toBe(400);
    const body = res.json();
    expect(body.error).toBeTruthy();
    const paths = body.details.map((d: { path: string }) => d.path);
    expect(paths).toContain('input.startup.name');
    expect(paths).toContain('input.startup.industry');
    expect((await post({ agent: 'Nope', action: 'x', input: {} })).json().error).toMatch(/Nope/);
    expect((await post({ agent: 'RiskAnalyzer', action: 'nope', input: {} })).statusCode).toBe(400);
    expect((await post({ ...valid, options: { priority: 0 } })).json().details[0].path).toBe('options.priority');
    expect((await post({ ...valid, extra: true })).statusCode).toBe(400);
    const notJson = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: { ...s.auth, 'content-type': 'application/json' }, payload: '{"agent":' });
    expect(notJson.statusCode).toBe(400);
    expect(notJson.json().error).toMatch(/not valid JSON/);
    const badUtf8 = Buffer.concat([Buffer.from('{"agent":"DealScorer","action":"pipeline_summary","input":{"startupId":"'), Buffer.from([0xc3, 0x28]), Buffer.from('"}}')]);
    const invalid = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: { ...s.auth, 'content-type': 'application/json' }, payload: badUtf8 });
    expect(invalid.statusCode).toBe(400);
    expect(invalid.json().error).toMatch(/UTF-8/);
    // A lone surrogate escape parses into a string no UTF-8 store holds as sent: refused, the field named (a value
    // or a key); a pair (an emoji) is a character like any other and reaches the schema.
    const raw = (text: string) => s.app.inject({ method: 'POST', url: '/v1/jobs', headers: { ...s.auth, 'content-type': 'application/json' }, payload: text });
    const lone = await raw('{"agent":"DealScorer","action":"pipeline_summary","input":{"startupId":"st-\\ud800"}}');
    expect(lone.statusCode).toBe(400);
    expect(lone.json()).toEqual({ error: 'invalid body', details: [{ path: 'input.startupId', message: expect.stringMatching(/lone surrogate/) }] });
    const loneLow = await raw('{"agent":"DealScorer","action":"pipeline_summary","input":{"startupId":"st-1"},"tags":["a","\\uDC00b"]}');
    expect(loneLow.json().details).toEqual([{ path: 'tags.1', message: expect.stringMatching(/lone surrogate/) }]);
    const loneKey = await raw('{"agent":"DealScorer","action":"pipeline_summary","input":{"\\udbff":1}}');
    expect(loneKey.json().details[0].path).toBe('input.\ufffd');
    const pair = await raw('{"agent":"DealScorer","action":"pipeline_summary","input":{"startupId":"st-\\ud83d\\ude00"}}');
    expect(pair.statusCode).toBe(202);
    expect(await queue.count()).toBe(before + 1);
  });

  it('answers 413 with JSON for a body over the limit', async () => {
    const res = await post({ ...valid, input: { startupId: 'x'.repeat(200 * 1024) } });
    expect(res.statusCode).toBe(413);
    expect(res.json().error).toMatch(/larger than/);
  });

  it('returns one job for 50 racing requests with the same idempotency key', async () => {
    const before = await queue.count();
    const payload = { ...valid, options: { idempotencyKey: 'order-123' } };
    const results = await Promise.all(Array.from({ length: 50 }, () => post(payload)));
    const ids = new Set(results.map((r) => r.json().id));
    expect(results.map((r) => r.statusCode)).toEqual(results.map(() => 202));
    expect(ids.size).toBe(1);
    // Parked for the dispatcher (no worker here): every answer, the duplicates' too, says waiting.
    expect(new Set(results.map((r) => r.json().state))).toEqual(new Set(['waiting']));
    expect(await queue.count()).toBe(before + 1);
    // The same key from another org is a different job.
    const other = await post(payload, { authorization: `Bearer ${await s.newKey()}` });
    expect(other.json().id).not.toBe([...ids][0]);
  });

  it('bulk validation is all-or-nothing and names the bad element', async () => {
    const before = await queue.count();
    const jobs = Array.from({ length: 10 }, (_, i) => ({ ...valid, input: { startupId: `s-${i}` } }));
    const bad = await s.app.inject({ method: 'POST', url: '/v1/jobs/bulk', headers: s.auth, payload: { jobs: [...jobs, { ...valid, input: { startupId: 42 } }] } });
    expect(bad.statusCode).toBe(400);
    expect(bad.json().details[0].path).toBe('jobs.10.input.startupId');
    expect(await queue.count()).toBe(before);
    const ok = await s.app.inject({ method: 'POST', url: '/v1/jobs/bulk', headers: s.auth, payload: { jobs } });
    expect(ok.statusCode).toBe(202);
    expect(await queue.count()).toBe(before + 10);
    const tooMany = await s.app.inject({ method: 'POST', url: '/v1/jobs/bulk', headers: s.auth, payload: { jobs: Array.from({ length: 1001 }, () => valid) } });
    expect(tooMany.statusCode).toBe(400);
    expect(tooMany.json().details[0].path).toBe('jobs');
  });

  it('parses each job request once: the route schema checks it, the producer does not parse it again', async () => {
    // The producer's own parse (`prepare`) is `jobRequestSchema.safeParse`; the bulk route's schema checks its
    // elements inside its own parse. Before, every job of a bulk body was parsed again by the producer.
    const parse = vi.spyOn(jobRequestSchema, 'safeParse');
    try {
      const jobs = Array.from({ length: 10 }, (_, i) => ({ ...valid, input: { startupId: `once-${i}` } }));
      const bulk = await s.app.inject({ method: 'POST', url: '/v1/jobs/bulk', headers: s.auth, payload: { jobs } });
      expect(bulk.statusCode).toBe(202);
      expect(parse).toHaveBeenCalledTimes(0);
      // The single route's body schema is jobRequestSchema itself: its one parse is the route's.
      expect((await post({ ...valid, input: { startupId: 'once-single' } })).statusCode).toBe(202);
      expect(parse.mock.calls.length).toBeLessThanOrEqual(1);
      // Still checked against the agent: a bad input in a bulk body names its element.
      const bad = await s.app.inject({ method: 'POST', url: '/v1/jobs/bulk', headers: s.auth, payload: { jobs: [valid, { ...valid, input: {} }] } });
      expect(bad.statusCode).toBe(400);
      expect(bad.json().details[0].path).toBe('jobs.1.input.startupId');
    } finally {
      parse.mockRestore();
    }
  });

  it('cancels a waiting and a delayed job, and reports them cancelled', async () => {
    const waiting = (await post(valid)).json();
    const delayed = (await post({ ...valid, options: { delayMs: 60_000 } })).json();
    expect(delayed.state).toBe('delayed');
    for (const { id } of [waiting, delayed]) {
      const del = await s.app.inject({ method: 'DELETE', url: `/v1/jobs/${id}`, headers: s.auth });
      expect(del.statusCode).toBe(200);
      expect(del.json().state).toBe('cancelled');
      expect(await queue.getJob(id)).toBeUndefined();
      const view = await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}`, headers: s.auth });
      expect(view.json().state).toBe('cancelled');
      expect((await s.app.inject({ method: 'DELETE', url: `/v1/jobs/${id}`, headers: s.auth })).statusCode).toBe(409);
    }
  });

  it('long-poll returns the current view after waitMs when nothing finishes', async () => {
    const { id } = (await post(valid)).json();
    const res = await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}?waitMs=200`, headers: s.auth });
    expect(res.json().state).toBe('waiting');
    expect((await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}?waitMs=abc`, headers: s.auth })).statusCode).toBe(400);
  });
});
