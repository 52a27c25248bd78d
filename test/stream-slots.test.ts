import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { startRedisServer, type RedisServerHandle } from '../src/shared/infra/redis/redis-server.js';
import { openStreamsKey } from '../src/shared/core/queue-keys.js';
import { createStreamSlots } from '../src/shared/stream/stream-slots.js';
import { streamingFeature } from '../src/app/features/streaming.js';
import { freezableProxy } from './helpers/freezable-proxy.js';
import { randomOrg, randomPrefix } from './helpers/env.js';
import { startStack, type Stack } from './helpers/stack.js';
import { POLL, until, waitsTimeout } from './helpers/wait.js';

/**
 * A stream slot's lease granted to a request that no longer waits for it (its deadline passed, its command
 * timed out) or refreshed after its release has no holder: it is released at once, instead of holding one of the
 * org's slots until it lapses (3 heartbeats). A Redis of its own: the tests flush its scripts.
 */
describe('stream slot leases nobody holds', () => {
  let redis: RedisServerHandle;
  let admin: Redis;
  // Leases here lapse after minutes: a slot back to 0 within a test was released, not lapsed.
  const leaseMs = 600_000;

  beforeAll(async () => {
    redis = await startRedisServer();
    admin = new Redis(redis.url);
  });
  afterAll(async () => {
    admin?.disconnect();
    await redis?.stop();
  });

  describe('through the API', () => {
    let proxy: Awaited<ReturnType<typeof freezableProxy>>;
    let s: Stack;
    beforeAll(async () => {
      proxy = await freezableProxy(new URL(redis.url));
      // Every connection of the stack goes through the proxy; the limiter's deadline is short.
      s = await startStack(
        { REDIS_URL: `redis://127.0.0.1:${proxy.port}`, ENQUEUE_DEADLINE_MS: '1000' },
        { worker: false, features: [streamingFeature({ heartbeatMs: leaseMs / 3, maxStreamsPerOrg: 1 })] },
      );
    });
    afterAll(async () => {
      await s?.close();
      proxy?.close();
    });

    const deal = (startupId: string) => ({ agent: 'DealScorer', action: 'pipeline_summary', input: { startupId } });

    for (const route of ['POST /v1/stream', 'GET /v1/jobs/:id/stream'] as const) {
      it(`${route}: a lease granted after the limiter's 503 is released when its reply arrives`, async () => {
        // An org of its own per route, whose one slot nothing else takes.
        const orgId = randomOrg();
        const headers = { authorization: `Bearer ${await s.newKey(orgId)}` };
        const key = openStreamsKey(s.cfg.QUEUE_PREFIX, orgId);
        let url = '/v1/stream';
        if (route !== 'POST /v1/stream') {
          const job = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers, payload: { ...deal('late-lease-get'), options: { stream: true } } });
          expect(job.statusCode).toBe(202);
          url = `/v1/jobs/${job.json<{ id: string }>().id}/stream`;
        }
        // The acquire reaches Redis, which grants the lease; its answer waits in the proxy past the deadline.
        proxy.holdRepliesAfter(key);
        try {
          const res = await s.app.inject({ method: route.startsWith('POST') ? 'POST' : 'GET', url, headers, ...(route.startsWith('POST') ? { payload: deal('late-lease') } : {}) });
          expect(res.statusCode).toBe(503);
          expect(res.json()).toEqual({ error: 'stream limiter unavailable' });
          expect(proxy.holding()).toBe(true);
          // The org's only slot is taken by a lease the request that asked for it no longer waits for.
          await until('the acquire to run', async () => (await admin.zcard(key)) === 1);
        } finally {
          proxy.passReplies();
        }
        // Its answer arrives now, after the 503: the lease is released at once, not in 3 heartbeats.
        await vi.waitFor(async () => expect(await admin.zcard(key)).toBe(0), POLL);
      }, waitsTimeout(POLL.timeout, POLL.timeout));
    }
  });

  describe('the limiter', () => {
    const slotsOn = (conn: Redis) => {
      const prefix = randomPrefix();
      const orgId = randomOrg();
      const slots = createStreamSlots({ redis: conn, prefixOf: () => prefix, maxPerOrg: 1, leaseMs });
      return { slots, orgId, key: openStreamsKey(prefix, orgId) };
    };

    it('an acquire whose command timed out has its lease, granted after, dropped behind it', async () => {
      const proxy = await freezableProxy(new URL(redis.url));
      const conn = new Redis({ host: '127.0.0.1', port: proxy.port, commandTimeout: 300, maxRetriesPerRequest: 1 });
      try {
        await conn.ping();
        const { slots, orgId, key } = slotsOn(conn);
        proxy.holdRepliesAfter(key);
        await expect(slots.acquire(orgId)).rejects.toThrow(/timed out/);
        proxy.passReplies();
        // Sent after the acquire (and after the ZREM that follows its timeout) on the same connection: when it
        // answers, Redis has run both.
        await conn.ping();
        expect(await admin.zcard(key)).toBe(0);
      } finally {
        conn.disconnect();
        proxy.close();
      }
    });

    it('a refresh that runs after the release does not take the slot back', async () => {
      const conn = new Redis(redis.url);
      try {
        const { slots, orgId, key } = slotsOn(conn);
        const { lease } = await slots.acquire(orgId);
        // The refresh script is loaded on this connection, then flushed: its next call is answered NOSCRIPT,
        // and ioredis sends it again as EVAL, behind the release's ZREM, which Redis runs first.
        await lease!.refresh();
        await admin.script('FLUSH');
        const evals = async () => Number(/cmdstat_eval:calls=(\d+)/.exec(await admin.info('commandstats'))?.[1] ?? 0);
        const before = await evals();
        await Promise.all([lease!.refresh(), lease!.release()]);
        expect(await evals(), 'the refresh was sent again after the release').toBeGreaterThan(before);
        expect(await admin.zcard(key)).toBe(0);
      } finally {
        conn.disconnect();
      }
    });
  });
});
