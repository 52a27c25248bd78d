import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createResultCache } from '../../src/shared/cache/result-cache.js';
import { agentqPrefix } from '../../src/shared/core/queue-keys.js';
import { createRedis, redisTargetOf } from '../../src/shared/infra/redis/connection.js';
import { clusterNodes, ownerAndReplica, pubsubCounters, startLocalCluster, type LocalCluster } from '../helpers/cluster.js';
import { UNTHROTTLED, cancelHeldCall, figure, riskJob, runRows } from '../helpers/faults.js';
import { startStack, type Stack } from '../helpers/stack.js';
import { queueShards } from '../../src/shared/core/queue-shards.js';

/** Run with queue shards (issue 13): the failover hits the primary that holds the org's shard. */
const SHARDS = 12;
import { POLL, until } from '../helpers/wait.js';

/**
 * A planned failover (CLUSTER FAILOVER on the replica of the primary that holds the org's queue shard, with
 * QUEUE_SHARDS=12) while the API takes about 20 jobs/s and a worker runs them: no 500s, and every accepted
 * job completes exactly once.
 */
describe('Redis Cluster failover', () => {
  let cluster: LocalCluster;
  let s: Stack;
  const tag = `fo${randomUUID().slice(0, 6)}`;
  /** The queue shard of the stack's org: its jobs, streams and channels live on that shard's primary. */
  const orgPrefix = () => queueShards(`{${tag}}`, SHARDS).prefixOf(s.orgId);

  beforeAll(async () => {
    cluster = await startLocalCluster({ primaries: 3, replicas: 1 });
    s = await startStack({ ...UNTHROTTLED, REDIS_CLUSTER_NODES: cluster.seeds, QUEUE_PREFIX: `{${tag}}`, QUEUE_SHARDS: String(SHARDS), WORKER_CONCURRENCY: '8', REDIS_AUTO_PIPELINING: 'on' }, { worker: true });
  }, 90_000);
  afterAll(async () => {
    await s?.close();
    await cluster?.stop();
  });

  it('CLUSTER FAILOVER under load: 0 answers of 500, every accepted job completes once', async () => {
    const { replica: found } = await ownerAndReplica(cluster, orgPrefix());
    expect(found, 'the owner has a replica').toBeDefined();
    const replica = found!;

    const statuses = new Map<number, number>();
    const accepted: string[] = [];
    let failedOverAt = 0;
    let stop = false;
    // About 20 requests/s: one every 50 ms (pacing the load, not waiting for a state).
    const load = (async () => {
      for (let i = 0; !stop; i++) {
        const res = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: riskJob(`${tag}-${i}`) });
        statuses.set(res.statusCode, (statuses.get(res.statusCode) ?? 0) + 1);
        if (res.statusCode === 202) accepted.push(res.json().id);
        // GETs exercise reads through the failover as well.
        if (i % 5 === 0) {
          const list = await s.app.inject({ method: 'GET', url: '/v1/jobs?limit=5', headers: s.auth });
          statuses.set(list.statusCode, (statuses.get(list.statusCode) ?? 0) + 1);
          if (list.statusCode === 200) expect(() => JSON.parse(list.body)).not.toThrow();
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    })();

    await until('20 jobs accepted before the failover', () => accepted.length >= 20, 60_000);
    const r = new Redis(replica.port, '127.0.0.1');
    await r.call('CLUSTER', 'FAILOVER');
    await until('the replica promoted', async () => /role:master/.test(await r.info('replication')), 30_000);
    r.disconnect();
    failedOverAt = accepted.length;
    await until('20 more jobs accepted after the failover', () => accepted.length >= failedOverAt + 20, 60_000);
    stop = true;
    await load;

    figure('cluster failover: answers by status', Object.fromEntries(statuses));
    expect(statuses.get(500) ?? 0).toBe(0);
    for (const id of accepted) {
      const res = await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}?waitMs=30000`, headers: s.auth });
      // The answer itself is named on failure: once in six runs beside two CPU hogs this read had no state.
      expect({ status: res.statusCode, state: res.json().state }, `${id}: ${res.body}`).toEqual({ status: 200, state: 'completed' });
    }
    const rows = await runRows(s, accepted);
    const twice = [...rows.entries()].filter(([, r]) => r.completed !== 1);
    figure('cluster failover: jobs accepted / completed once', { accepted: accepted.length, notOnce: twice.length });
    expect(twice).toEqual([]);
  }, 180_000);
  it('sharded pub/sub after a CLUSTER FAILOVER: a cancel aborts the running call and an invalidation is heard', async () => {
    // The server ends SSUBSCRIBE subscriptions on a primary it demotes; ioredis 5.11 does not notice on its own
    // (subscribeShardChannel does). Subscribed before the failover, each listener must hear what comes after it.
    const target = redisTargetOf(s.cfg);
    const heard: string[] = [];
    const [redis, subscriber] = [createRedis(target, 'worker'), createRedis(target, 'subscriber')];
    createResultCache({ redis, subscriber, prefix: agentqPrefix(orgPrefix()), l1Max: 10, l1TtlMs: 60_000, l2TtlS: 60, onInvalidation: (orgId) => heard.push(orgId) });
    const admin = { authorization: `Bearer ${await s.newKey(s.orgId, 'org-admin')}` };
    try {
      await until('the cache hears invalidations', async () => {
        await s.app.inject({ method: 'DELETE', url: '/v1/cache', headers: admin });
        return heard.length > 0;
      });
      const { owner, replica } = await ownerAndReplica(cluster, orgPrefix());
      expect(replica, 'the owner has a replica').toBeDefined();
      const r = new Redis(replica!.port, '127.0.0.1');
      await r.call('CLUSTER', 'FAILOVER');
      await until('the replica promoted', async () => /role:master/.test(await r.info('replication')), 30_000);
      r.disconnect();
      // The new primary counts the demoted one among its replicas (it learns so by gossip) before the count
      // starts: a shard's messages go to the replicas its primary knows.
      await until('the demoted primary known as a replica by the new one', async () =>
        (await clusterNodes(replica!.port)).some((n) => n.port === owner.port && !n.primary && n.master === replica!.id),
      30_000);
      const start = await pubsubCounters(cluster);

      await cancelHeldCall(s, `Held after failover ${tag}`);

      heard.length = 0;
      expect((await s.app.inject({ method: 'DELETE', url: '/v1/cache', headers: admin })).statusCode).toBe(200);
      await vi.waitFor(() => expect(heard, 'the invalidation heard after the failover').toContain(s.orgId), POLL);

      const end = await pubsubCounters(cluster);
      const delta = Object.fromEntries(Object.entries(end).map(([k, v]) => [k, v - start[k as keyof typeof start]]));
      figure('cluster pub/sub for one cancel + one invalidation (3 primaries, 1 replica each), summed over nodes', delta);
      // Sent to the shard's replica only, never to the other 4 nodes.
      expect(delta).toMatchObject({ publishCalls: 0, busPublish: 0 });
      expect(delta.busPublishShard).toBe(delta.spublishCalls);
    } finally {
      redis.disconnect();
      subscriber.disconnect();
    }
  }, 120_000);
});
