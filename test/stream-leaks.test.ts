import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { startRedisServer, type RedisServerHandle } from '../src/shared/infra/redis/redis-server.js';
import { openStreamsKey } from '../src/shared/core/queue-keys.js';
import { streamingFeature } from '../src/app/features/streaming.js';
import { startStack, type Stack } from './helpers/stack.js';
import { POLL } from './helpers/wait.js';

const timers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;

/**
 * Connect/disconnect churn must not leak: SSE clients share one reader connection (and the long poll's
 * QueueEvents connection), and a client that leaves frees its timer, subscription and lease. A Redis of its
 * own, so CLIENT LIST counts only this stack's connections.
 */
describe('SSE connect/disconnect churn', () => {
  let redis: RedisServerHandle;
  let admin: Redis;
  let s: Stack;
  let base: string;

  beforeAll(async () => {
    redis = await startRedisServer();
    admin = new Redis(redis.url);
    // No worker: the jobs stay waiting, so every stream stays open until its client leaves.
    s = await startStack({ REDIS_URL: redis.url }, { worker: false, features: [streamingFeature({ heartbeatMs: 100, maxStreamsPerOrg: 1000 })] });
    await s.app.listen({ port: 0, host: '127.0.0.1' });
    const addr = s.app.server.address();
    base = `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`;
  });
  afterAll(async () => {
    await s?.close();
    admin?.disconnect();
    await redis?.stop();
  });

  const clients = async () => String(await admin.client('LIST')).split('\n').filter((l) => l.trim()).length;

  it('220 cycles leave no Redis connection, lease or timer behind', { timeout: 120_000 }, async () => {
    const headers = { ...s.auth, 'content-type': 'application/json' };
    const enqueue = async (stream: boolean) => {
      const input = { startup: { name: 'Churn', industry: 'robotics', stage: 'seed', description: 'Connect and leave' } };
      const res = await fetch(`${base}/v1/jobs`, { method: 'POST', headers, body: JSON.stringify({ agent: 'RiskAnalyzer', action: 'analyze_risks', input, options: { stream } }) });
      return ((await res.json()) as { id: string }).id;
    };
    const streaming = await enqueue(true);
    const polled = await enqueue(false);
    const cycle = async (id: string) => {
      const ac = new AbortController();
      const res = await fetch(`${base}/v1/jobs/${id}/stream`, { headers: s.auth, signal: ac.signal });
      expect(res.status).toBe(200);
      ac.abort();
    };
    const leases = () => admin.zcard(openStreamsKey(s.cfg.QUEUE_PREFIX, s.orgId));
    // Requests whose client left early may still be in their handler: wait for a state that holds on
    // three checks in a row.
    const settled = async (check: () => Promise<void>) => {
      let held = 0;
      await vi.waitFor(
        async () => {
          try {
            await check();
          } catch (err) {
            held = 0;
            throw err;
          }
          expect(++held, 'checks in a row the state held').toBeGreaterThanOrEqual(3);
        },
        { timeout: 30_000, interval: 50 },
      );
    };

    // Warm up: the shared reader and the long poll's event connection are made on first use. The baseline
    // is taken once no lease is left and connections and timers have stopped changing.
    await cycle(streaming);
    await cycle(polled);
    let last: number[] = [];
    await settled(async () => {
      const now = [await leases(), await clients(), timers()];
      const prev = last;
      last = now;
      expect(now[0]).toBe(0);
      expect(now).toEqual(prev);
    });
    const before = { clients: await clients(), timers: timers() };

    // Clients that leave before any answer, some while the server is still looking the job up.
    for (let i = 0; i < 20; i++) {
      const ac = new AbortController();
      const pending = fetch(`${base}/v1/jobs/${i % 2 ? polled : streaming}/stream`, { headers: s.auth, signal: ac.signal }).catch((err: Error) => err);
      setTimeout(() => ac.abort(), i % 5);
      await pending;
    }
    for (let batch = 0; batch < 20; batch++) {
      await Promise.all(Array.from({ length: 10 }, (_, i) => cycle(i % 2 ? polled : streaming)));
    }

    await settled(async () => {
      expect(await leases()).toBe(0);
      expect(await clients()).toBeLessThanOrEqual(before.clients);
    });
    expect(await leases()).toBe(0);
    expect(await clients()).toBe(before.clients);
    // Long polls in flight end within one heartbeat; a leak would leave ~100 heartbeat intervals. (Counted
    // again outside vi.waitFor, whose own two timers are active while it polls.)
    await vi.waitFor(() => expect(timers()).toBeLessThanOrEqual(before.timers + 5 + 2), POLL);
    expect(timers()).toBeLessThanOrEqual(before.timers + 5);

    // Streams still work after the churn.
    const ac = new AbortController();
    const res = await fetch(`${base}/v1/jobs/${streaming}/stream`, { headers: s.auth, signal: ac.signal });
    const reader = res.body!.getReader();
    expect(new TextDecoder().decode((await reader.read()).value)).toContain(': ping');
    ac.abort();
  });

  it('counts open SSE streams in the metrics gauge', async () => {
    const gauge = async () => (await s.runtime.deps.metrics.registry.getSingleMetric('agentq_sse_streams_open')!.get()).values[0]?.value ?? 0;
    const res0 = await fetch(`${base}/v1/jobs`, {
      method: 'POST',
      headers: { ...s.auth, 'content-type': 'application/json' },
      body: JSON.stringify({ agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: 'gauge' }, options: { stream: true } }),
    });
    const { id } = (await res0.json()) as { id: string };
    const before = await gauge();
    const ac = new AbortController();
    const res = await fetch(`${base}/v1/jobs/${id}/stream`, { headers: s.auth, signal: ac.signal });
    expect(res.status).toBe(200);
    expect(await gauge()).toBe(before + 1);
    ac.abort();
    await vi.waitFor(async () => expect(await gauge()).toBe(before), POLL);
  });
});
