import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { orchestrationFeature } from '../src/app/features/orchestration.js';
import { streamingFeature } from '../src/app/features/streaming.js';
import { openStreamsKey, orgJobsKey } from '../src/shared/core/queue-keys.js';
import { randomOrg, redisUrl } from './helpers/env.js';
import { freezableProxy } from './helpers/freezable-proxy.js';
import { startStack, type Stack } from './helpers/stack.js';
import { POLL, until, within, waitsTimeout } from './helpers/wait.js';

describe('API shutdown', () => {
  let s: Stack | undefined;
  let base: string;
  beforeAll(async () => {
    s = await startStack({ LONG_POLL_MAX_MS: '120000' }, { worker: true, features: [orchestrationFeature] });
    base = await s.app.listen({ port: 0, host: '127.0.0.1' });
  });
  afterAll(async () => s?.close());

  it('answers the long polls in flight with their current view instead of holding the shutdown for their waitMs', async () => {
    const stack = s!;
    const auth = stack.auth;
    const job = await stack.app.inject({ method: 'POST', url: '/v1/jobs', headers: auth, payload: { agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: 'shutdown' }, options: { delayMs: 600_000 } } });
    expect(job.statusCode).toBe(202);
    const flow = await stack.app.inject({ method: 'POST', url: '/v1/flows/parallel', headers: auth, payload: { tasks: [{ agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: 'shutdown-flow' }, options: { delayMs: 600_000 } }] } });
    expect(flow.statusCode).toBe(202);
    // Real connections: fastify's close waits for their responses.
    const polls = [`/v1/jobs/${job.json().id}`, `/v1/flows/${flow.json().id}`].map((path) => fetch(`${base}${path}?waitMs=100000`, { headers: auth }));
    await until('the job long poll to be registered', () => stack.runtime.deps.jobs.waiters.size().waiters === 1);
    s = undefined;
    const closing = stack.close();
    const [jobRes, flowRes] = await Promise.all(polls);
    expect(jobRes.status).toBe(200);
    expect((await jobRes.json()).state).toBe('delayed');
    // The flow poll may reach the app only once it is closing (a 503, as for any new request), or be registered
    // after its waits were ended (it then ends at once): either way it answers, and the close does not wait for it.
    expect([200, 503]).toContain(flowRes.status);
    if (flowRes.status === 200) expect((await flowRes.json()).state).not.toMatch(/completed|failed/);
    // A long poll whose wait registers after the close began (still in its first read then) ends at once too.
    const late = stack.runtime.deps.jobs.waiters.register(job.json().id, 100_000);
    expect(await late.ended).toBe('closing');
    await closing;
  });
});

/**
 * A stream request still in its async prefix (the limiter's acquire, the enqueue of POST /v1/stream) when the close
 * began opens its session after preClose cut the open ones: it must not hold `app.close()` until its job ends.
 * Every connection of the stack goes through a proxy that holds Redis's reply to that request; no worker runs, so
 * the jobs never end.
 */
describe('API shutdown: a stream that starts once the close began', () => {
  const deal = (startupId: string) => ({ agent: 'DealScorer', action: 'pipeline_summary', input: { startupId } });
  const cases = [
    { route: 'GET /v1/jobs/:id/stream', held: 'acquire' },
    { route: 'POST /v1/stream', held: 'acquire' },
    { route: 'POST /v1/stream', held: 'enqueue' },
  ] as const;

  for (const { route, held } of cases) {
    it(`${route} whose ${held} answers after preClose: the close does not wait for its job, and its slot is released`, async () => {
      const proxy = await freezableProxy(new URL(redisUrl()));
      const admin = new Redis(redisUrl());
      const stack = await startStack({ REDIS_URL: `redis://127.0.0.1:${proxy.port}` }, { worker: false, features: [streamingFeature()] });
      let closing: Promise<void> | undefined;
      const aborts: AbortController[] = [];
      let base = '';
      const open = (path: string, init: RequestInit) => {
        const ac = new AbortController();
        aborts.push(ac);
        return fetch(`${base}${path}`, { ...init, signal: ac.signal });
      };
      try {
        base = await stack.app.listen({ port: 0, host: '127.0.0.1' });
        const enqueue = async (headers: Record<string, string>, startupId: string) => {
          const res = await stack.app.inject({ method: 'POST', url: '/v1/jobs', headers, payload: { ...deal(startupId), options: { stream: true } } });
          expect(res.statusCode).toBe(202);
          return res.json<{ id: string }>().id;
        };
        // A stream open before the close: its cut says the streams' preClose hook has run.
        const before = await open(`/v1/jobs/${await enqueue(stack.auth, 'open-before')}/stream`, { headers: stack.auth });
        expect(before.status).toBe(200);

        // The late request, of an org of its own: its Redis reply waits in the proxy.
        const orgId = randomOrg();
        const headers = { authorization: `Bearer ${await stack.newKey(orgId)}`, 'content-type': 'application/json' };
        const slotKey = openStreamsKey(stack.cfg.QUEUE_PREFIX, orgId);
        const marker = `late-enqueue-${randomOrg()}`;
        const lateJob = route.startsWith('GET') ? await enqueue(headers, 'late-get') : undefined;
        proxy.holdRepliesAfter(held === 'acquire' ? slotKey : marker);
        const late = lateJob
          ? open(`/v1/jobs/${lateJob}/stream`, { headers })
          : open('/v1/stream', { method: 'POST', headers, body: JSON.stringify(deal(marker)) });
        await until(`the late request's ${held} to reach Redis`, () => proxy.holding());

        closing = stack.close();
        expect(await before.text()).not.toContain('[DONE]');
        proxy.passReplies();
        // Its job never ends (no worker): the close resolves only if that stream does not hold it.
        const [res] = await within(Promise.all([late, closing]), 20_000, 'app.close() while a stream started after preClose');
        if (held === 'acquire') {
          // Nothing was sent yet: refused, nothing enqueued.
          expect(res.status).toBe(503);
          expect(res.headers.get('retry-after')).toBe('1');
          expect(await res.json()).toEqual({ error: 'server is shutting down: retry on another instance' });
          expect(res.headers.get('x-job-id')).toBeNull();
          if (!lateJob) expect(await admin.exists(orgJobsKey(stack.cfg.QUEUE_PREFIX, orgId))).toBe(0);
        } else {
          // Its job is enqueued: the stream starts and ends at once without [DONE], as preClose ends the others;
          // the client resumes it elsewhere by its id.
          expect(res.status).toBe(200);
          expect(res.headers.get('x-job-id')).toBeTruthy();
          const body = await res.text();
          expect(body).toContain('"stage":"queued"');
          expect(body).not.toContain('[DONE]');
          expect(await admin.exists(orgJobsKey(stack.cfg.QUEUE_PREFIX, orgId))).toBe(1);
        }
        await vi.waitFor(async () => expect(await admin.zcard(slotKey)).toBe(0), POLL);
      } finally {
        // Without the fix the late stream holds the close: ended here so the stack still closes.
        for (const ac of aborts) ac.abort();
        await (closing ?? stack.close()).catch(() => undefined);
        admin.disconnect();
        proxy.close();
      }
    }, waitsTimeout(POLL.timeout, 20_000, POLL.timeout));
  }
});
