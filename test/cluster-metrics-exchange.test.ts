import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { Registry, Counter } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../src/shared/core/config.js';
import { createLogger } from '../src/shared/core/logger.js';
import { metricsExchangeKey } from '../src/shared/core/queue-keys.js';
import { createRedis, redisTargetOf, whenReady, type RedisClient } from '../src/shared/infra/redis/connection.js';
import { createMetricsExchange } from '../src/shared/ops/metrics-exchange.js';
import { clusterNodes, startLocalCluster, type LocalCluster } from './helpers/cluster.js';

/**
 * The metrics exchange stamps each process's snapshot with Redis time and judges it stale by Redis time: on a
 * Redis Cluster both must be the clock of the node that holds the exchange. A keyless TIME went to any primary,
 * so a field stamped by one primary was judged by another's clock (a skew between them made live processes look
 * stale, or kept dead ones fresh). Counted with each primary's command stats: TIME run on a primary, by a client
 * or inside a script, shows as cmdstat_time there.
 */
describe('metrics exchange on a Redis Cluster', () => {
  let cluster: LocalCluster;
  let redis: RedisClient;
  const tag = `mx${randomUUID().slice(0, 6)}`;
  beforeAll(async () => {
    cluster = await startLocalCluster({ primaries: 3 });
    const seeds = cluster.nodes.map((n) => `127.0.0.1:${n.port}`).join(',');
    redis = createRedis(redisTargetOf(parseConfig({ REDIS_CLUSTER_NODES: seeds, QUEUE_PREFIX: `{${tag}}` })), 'api');
  }, 60_000);
  afterAll(async () => {
    redis?.disconnect();
    await cluster?.stop();
  });

  /** TIME calls per primary's port since the last reset. */
  async function timeCalls(ports: number[], reset = false): Promise<Map<number, number>> {
    const calls = new Map<number, number>();
    for (const port of ports) {
      const node = new Redis(port, '127.0.0.1');
      if (reset) await node.config('RESETSTAT');
      calls.set(port, Number(/cmdstat_time:calls=(\d+)/.exec(await node.info('commandstats'))?.[1] ?? 0));
      node.disconnect();
    }
    return calls;
  }

  it('reads the time of the node that owns the exchange only, publishing and scraping', async () => {
    const prefix = `{${tag}}`;
    const owner = await cluster.ownerOf(metricsExchangeKey(prefix));
    const primaries = (await clusterNodes(cluster.nodes[0].port)).filter((n) => n.primary).map((n) => n.port);
    expect(primaries).toHaveLength(3);
    const registry = new Registry();
    new Counter({ name: 'mx_jobs_total', help: 'jobs', registers: [registry] }).inc(3);
    const logger = createLogger({ level: 'silent' });
    const writer = createMetricsExchange({ redis, prefix, registry, logger });
    const reader = createMetricsExchange({ redis, prefix, registry: new Registry(), logger });
    // The client's connection to every primary open first: a keyless command may then go to any of them.
    await whenReady(redis);
    await timeCalls(primaries, true);
    // 20 rounds: with a random primary per TIME, all 40 on the owner would be a 1 in 3^40 chance.
    for (let i = 0; i < 20; i++) {
      await writer.publish();
      const summed = await (await reader.collect()).getSingleMetricAsString('mx_jobs_total');
      expect(summed).toContain('mx_jobs_total 3');
    }
    const calls = await timeCalls(primaries);
    expect(calls.get(owner)).toBeGreaterThanOrEqual(40);
    expect([...calls].filter(([port]) => port !== owner).map(([, n]) => n)).toEqual([0, 0]);
    await writer.close();
    await reader.close();
  }, 90_000);
});
