import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createSseParser } from '../src/producers/client/sse-parser.js';
import { POLL, until, waitsTimeout } from './helpers/wait.js';
import { parseConfig } from '../src/shared/core/config.js';
import { agentqPrefix, cancelChannel, guardKeys } from '../src/shared/core/queue-keys.js';
import { createResultCache } from '../src/shared/cache/result-cache.js';
import { assertNoEviction, createRedis, ELECTION_MARGIN_MS, lockShorterThanFailover, redisTargetOf } from '../src/shared/infra/redis/connection.js';
import { pubsubCounters, startLocalCluster, type LocalCluster } from './helpers/cluster.js';
import { startStack, type Stack } from './helpers/stack.js';

const startup = (name: string) => ({ startup: { name, industry: 'robotics', stage: 'seed', description: `${name} builds robots` } });

/**
 * agentq on a real 3-primary Redis Cluster (redis-server --cluster-enabled, redis-cli --cluster create):
 * every connection is an ioredis Cluster, started from a seed node that does NOT own the queue's slot.
 */
describe('Redis Cluster mode', () => {
  let cluster: LocalCluster;
  let s: Stack;
  const tag = `aq${randomUUID().slice(0, 6)}`;
  let owner: number;

  beforeAll(async () => {
    cluster = await startLocalCluster({ primaries: 3 });
    owner = await cluster.ownerOf(`{${tag}}`);
    // Seeded only with nodes that do not own the slot: without a cluster client this start fails with MOVED.
    const seeds = cluster.nodes.filter((n) => n.port !== owner).map((n) => `127.0.0.1:${n.port}`).join(',');
    // Auto-pipelined as a worker with 16 or more jobs at once is (REDIS_AUTO_PIPELINING auto): ioredis then pipelines per node.
    s = await startStack({ REDIS_CLUSTER_NODES: seeds, QUEUE_PREFIX: `{${tag}}`, ADMIN_TOKEN: 'cluster-admin-token', REDIS_AUTO_PIPELINING: 'on' }, { worker: true });
  }, 60_000);
  afterAll(async () => {
    await s?.close();
    await cluster?.stop();
  });

  it('runs jobs, flows, listings, readiness and metrics through the cluster client', async () => {
    const post = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: { agent: 'RiskAnalyzer', action: 'analyze_risks', input: startup('Clustered') } });
    expect(post.statusCode).toBe(202);
    const done = (await s.app.inject({ method: 'GET', url: `/v1/jobs/${post.json().id}?waitMs=20000`, headers: s.auth })).json();
    expect(done.state).toBe('completed');
    expect(done.result.data).toBeDefined();

    const tasks = ['a', 'b'].map((k) => ({ agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: `${k}-${tag}` } }));
    const flow = await s.app.inject({ method: 'POST', url: '/v1/flows/parallel', headers: s.auth, payload: { tasks } });
    expect(flow.statusCode).toBe(202);
    const settled = (await s.app.inject({ method: 'GET', url: `/v1/flows/${flow.json().id}?waitMs=20000`, headers: s.auth })).json();
    expect(settled).toMatchObject({ state: 'completed' });
    expect(Object.keys(settled.result.results)).toHaveLength(2);

    const list = await s.app.inject({ method: 'GET', url: '/v1/jobs', headers: s.auth });
    expect(list.statusCode).toBe(200);
    expect((list.json() as Array<{ id: string }>).map((j) => j.id)).toContain(post.json().id);

    expect((await s.app.inject({ method: 'GET', url: '/readyz' })).statusCode).toBe(200);
    const metrics = await s.app.inject({ method: 'GET', url: '/metrics', headers: { authorization: 'Bearer cluster-admin-token' } });
    expect(metrics.statusCode).toBe(200);
    expect(metrics.body).toContain('agentq_queue_jobs');

    // Everything lives under one hash tag: the data is on the slot's owner, nothing on the other primaries.
    const perNode = await Promise.all(
      cluster.nodes.map(async (n) => {
        const r = new Redis(n.port, '127.0.0.1');
        const size = await r.dbsize();
        r.disconnect();
        return { port: n.port, size };
      }),
    );
    expect(perNode.find((n) => n.port === owner)!.size).toBeGreaterThan(0);
    for (const n of perNode.filter((x) => x.port !== owner)) expect(n.size, `keys on non-owner ${n.port}`).toBe(0);
  });

  it('streams a job over SSE, cancels a running one and replays a dead-lettered one through the cluster client', async () => {
    // Streaming reads the job's Redis Stream with a blocking XREAD; cancel travels on sharded pub/sub (to the
    // shard that owns the queue's slot, where the worker's SSUBSCRIBE is); the DLQ reads BullMQ's failed set.
    const streamed = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: { agent: 'RiskAnalyzer', action: 'analyze_risks', input: startup('Streamed'), options: { stream: true } } });
    expect(streamed.statusCode).toBe(202);
    const sse = await s.app.inject({ method: 'GET', url: `/v1/jobs/${streamed.json().id}/stream`, headers: s.auth });
    expect(sse.statusCode).toBe(200);
    const events = createSseParser().feed(sse.body);
    expect(events.at(-1)?.data).toBe('[DONE]');
    const data = (event: string) => events.slice(0, -1).filter((m) => m.event === event).map((m) => JSON.parse(m.data));
    expect(data('progress').map((p) => p.stage)).toContain('streaming');
    const texts = data('message').filter((d) => 'text' in d).map((d) => d.text as string);
    expect(texts.length, 'text chunks in the stream').toBeGreaterThan(0);
    expect(JSON.parse(texts.join(''))).toEqual(data('message').find((d) => 'result' in d)?.result.data);

    const held = `Held ${tag}`;
    s.emulator.script({ hang: true, match: { promptIncludes: held } });
    const running = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: { agent: 'RiskAnalyzer', action: 'analyze_risks', input: startup(held) } });
    expect(running.statusCode).toBe(202);
    const hung = () => s.emulator.calls().find((c) => c.fault === 'hang');
    await vi.waitFor(() => expect(hung(), 'the held model call').toBeDefined(), POLL);
    const del = await s.app.inject({ method: 'DELETE', url: `/v1/jobs/${running.json().id}`, headers: s.auth });
    expect(del.json()).toMatchObject({ state: 'cancelling' });
    const cancelled = (await s.app.inject({ method: 'GET', url: `/v1/jobs/${running.json().id}?waitMs=20000`, headers: s.auth })).json();
    expect(cancelled).toMatchObject({ state: 'cancelled', attempts: 1 });
    await vi.waitFor(() => expect(hung()?.aborted, 'the held call aborted by the worker').toBe(true), POLL);

    const doomed = `Doomed ${tag}`;
    s.emulator.script({ status: 503, times: -1, match: { promptIncludes: doomed } });
    const failing = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: { agent: 'RiskAnalyzer', action: 'analyze_risks', input: startup(doomed) } });
    const id = failing.json().id as string;
    expect((await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}?waitMs=20000`, headers: s.auth })).json().state).toBe('failed');
    const admin = { authorization: `Bearer ${await s.newKey(s.orgId, 'org-admin')}` };
    const dlq = await s.app.inject({ method: 'GET', url: '/v1/dlq', headers: admin });
    expect(dlq.json().entries.map((e: { id: string }) => e.id)).toContain(id);
    s.emulator.clearFaults();
    const retry = await s.app.inject({ method: 'POST', url: `/v1/dlq/${id}/retry`, headers: admin, payload: {} });
    expect(retry.json()).toMatchObject({ id, dlqRetries: 1 });
    expect((await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}?waitMs=20000`, headers: s.auth })).json().state).toBe('completed');
  }, waitsTimeout(POLL.timeout, POLL.timeout));

  it('cancels and invalidates over sharded pub/sub: SPUBLISH on the owner, no message on the cluster bus', async () => {
    // A result cache as a worker process builds it, on cluster connections of its own: it hears invalidations.
    const target = redisTargetOf(s.cfg);
    const prefix = agentqPrefix(s.cfg.QUEUE_PREFIX);
    const channel = guardKeys.resultInvalidations(prefix);
    const ownerNode = new Redis(owner, '127.0.0.1');
    const shardSubscribers = async (ch: string) => Number(((await ownerNode.call('PUBSUB', 'SHARDNUMSUB', ch)) as [string, number])[1]);
    const before = await shardSubscribers(channel);
    const heard: string[] = [];
    const [redis, subscriber] = [createRedis(target, 'worker'), createRedis(target, 'subscriber')];
    createResultCache({ redis, subscriber, prefix, l1Max: 10, l1TtlMs: 60_000, l2TtlS: 60, onInvalidation: (orgId) => heard.push(orgId) });
    try {
      await until('the cache subscribed on the owner', async () => (await shardSubscribers(channel)) === before + 1);
      // The stack's worker hears cancels on the owner, with SSUBSCRIBE only.
      expect(await shardSubscribers(cancelChannel(s.cfg.QUEUE_PREFIX))).toBeGreaterThan(0);
      const start = await pubsubCounters(cluster);

      const held = `Sharded ${tag}`;
      s.emulator.script({ hang: true, match: { promptIncludes: held } });
      // The earlier test held (and cancelled) a call too: this one is the next held.
      const earlier = s.emulator.calls().filter((c) => c.fault === 'hang').length;
      const hung = () => s.emulator.calls().filter((c) => c.fault === 'hang')[earlier];
      const running = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: { agent: 'RiskAnalyzer', action: 'analyze_risks', input: startup(held) } });
      await vi.waitFor(() => expect(hung(), 'the held model call').toBeDefined(), POLL);
      expect((await s.app.inject({ method: 'DELETE', url: `/v1/jobs/${running.json().id}`, headers: s.auth })).json()).toMatchObject({ state: 'cancelling' });
      await vi.waitFor(() => expect(hung()?.aborted, 'the held call aborted by the worker').toBe(true), POLL);

      const admin = { authorization: `Bearer ${await s.newKey(s.orgId, 'org-admin')}` };
      expect((await s.app.inject({ method: 'DELETE', url: '/v1/cache', headers: admin })).statusCode).toBe(200);
      await vi.waitFor(() => expect(heard, 'the invalidation heard by the cache on the cluster').toContain(s.orgId), POLL);

      const end = await pubsubCounters(cluster);
      const delta = Object.fromEntries(Object.entries(end).map(([k, v]) => [k, v - start[k as keyof typeof start]]));
      console.log(`[figure] cluster pub/sub for one cancel + one cache invalidation (3 primaries, no replica), summed over nodes: ${JSON.stringify(delta)}`);
      // PUBLISH would have gone to the 2 other primaries over the cluster bus; SPUBLISH stays in the owner's
      // shard (no replica here: nothing to send on the bus at all).
      expect(delta).toMatchObject({ publishCalls: 0, busPublish: 0, busPublishShard: 0 });
      expect(delta.spublishCalls).toBeGreaterThanOrEqual(2);
    } finally {
      ownerNode.disconnect();
      redis.disconnect();
      subscriber.disconnect();
    }
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout, POLL.timeout));

  it('refuses a start when any primary could evict keys, naming that node', async () => {
    const victim = cluster.nodes.find((n) => n.port !== owner)!;
    const direct = new Redis(victim.port, '127.0.0.1');
    await direct.config('SET', 'maxmemory-policy', 'allkeys-lru');
    const client = createRedis(redisTargetOf(s.cfg), 'api');
    try {
      await expect(assertNoEviction(client)).rejects.toThrow(`node 127.0.0.1:${victim.port} maxmemory-policy is "allkeys-lru"`);
    } finally {
      await direct.config('SET', 'maxmemory-policy', 'noeviction');
      direct.disconnect();
      client.disconnect();
    }
    const again = createRedis(redisTargetOf(s.cfg), 'api');
    await expect(assertNoEviction(again)).resolves.toBeUndefined();
    again.disconnect();
  });

  it('names the primaries whose failover (cluster-node-timeout + election) would outlast a job lock', async () => {
    const client = createRedis(redisTargetOf(s.cfg), 'api');
    try {
      // The local cluster (3 primaries, no replica) runs with cluster-node-timeout 2000: a lock must outlast
      // 2000 + the election margin.
      expect(await lockShorterThanFailover(client, 2000 + ELECTION_MARGIN_MS)).toEqual([]);
      const short = await lockShorterThanFailover(client, 4000);
      expect(short.map((n) => n.node).sort()).toEqual(cluster.nodes.map((n) => `127.0.0.1:${n.port}`).sort());
      expect(short.every((n) => n.nodeTimeoutMs === 2000)).toBe(true);
      // A standalone server has no failover to outlast.
      const single = new Redis(cluster.nodes[0].port, '127.0.0.1');
      expect(await lockShorterThanFailover(single, 1)).toEqual([]);
      single.disconnect();
    } finally {
      client.disconnect();
    }
  });

  it('refuses a queue prefix without a {hash tag} in cluster mode, naming the variable', () => {
    expect(() => parseConfig({ REDIS_CLUSTER_NODES: '127.0.0.1:7000', QUEUE_PREFIX: 'agentq' })).toThrow(/QUEUE_PREFIX=.*\{hash tag\}/);
    expect(() => parseConfig({ REDIS_CLUSTER_NODES: '127.0.0.1', QUEUE_PREFIX: '{agentq}' })).toThrow(/REDIS_CLUSTER_NODES/);
    expect(parseConfig({ REDIS_CLUSTER_NODES: '10.0.0.1:7000,10.0.0.2:7001', QUEUE_PREFIX: '{agentq}' }).REDIS_CLUSTER_NODES).toEqual([
      { host: '10.0.0.1', port: 7000 },
      { host: '10.0.0.2', port: 7001 },
    ]);
  });
});
