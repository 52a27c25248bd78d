import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { queueShards } from '../src/shared/core/queue-shards.js';
import { jobStreamKey } from '../src/shared/core/queue-keys.js';
import { createLogger } from '../src/shared/core/logger.js';
import { createRedis, type RedisClient } from '../src/shared/infra/redis/connection.js';
import { createStreamReader, type StreamReader } from '../src/shared/stream/stream-reader.js';
import { POLL } from './helpers/wait.js';
import { startLocalCluster, type LocalCluster } from './helpers/cluster.js';

const SHARDS = 6;

/**
 * The SSE reader of one queue shard blocks in one XREAD for every open stream of its shard, and a new stream
 * wakes that read (CLIENT UNBLOCK with the reader's connection id). On a Redis Cluster both CLIENT ID and
 * CLIENT UNBLOCK name no key: sent through a Cluster client they go to a random primary, so the wake must be
 * sent, and the id read, on the primary that holds the shard's slot.
 */
describe('the shared stream reader on a Redis Cluster', () => {
  let cluster: LocalCluster;
  let control: RedisClient;
  let seeds: Array<{ host: string; port: number }>;
  const layout = queueShards(`{sr${randomUUID().slice(0, 6)}}`, SHARDS);
  const readers: StreamReader[] = [];

  beforeAll(async () => {
    cluster = await startLocalCluster({ primaries: 3 });
    seeds = cluster.seeds.split(',').map((s) => ({ host: s.split(':')[0], port: Number(s.split(':')[1]) }));
    control = createRedis({ cluster: seeds }, 'api');
  }, 90_000);
  afterAll(async () => {
    for (const r of readers) await r.close();
    control?.disconnect();
    await cluster?.stop();
  });

  it('a stream added while the read blocks on another is read at once, in every shard (two shards a primary)', async () => {
    // Far longer than the test: a stream read only once the block ends would never be read here.
    const blockMs = 600_000;
    const logger = createLogger({ level: 'silent' });
    const got = layout.prefixes.map(() => [] as string[]);
    for (const prefix of layout.prefixes) {
      const reader = createStreamReader({ connect: () => createRedis({ cluster: seeds }, 'worker'), control, blockMs, count: 10, logger });
      readers.push(reader);
      // An empty stream: the reader blocks on it.
      reader.subscribe(jobStreamKey(prefix, 'idle'), '0-0', () => {}, () => {});
    }
    // Every reader's XREAD blocked on its shard's primary (the only XREADs of this cluster).
    await vi.waitFor(async () => {
      let blocked = 0;
      for (const port of new Set(await Promise.all(layout.prefixes.map((p) => cluster.ownerOf(p))))) {
        const node = new Redis(port, '127.0.0.1');
        const clients = String(await node.client('LIST'));
        node.disconnect();
        blocked += clients.split('\n').filter((l) => / flags=b /.test(l) && / cmd=xread /.test(l)).length;
      }
      expect(blocked).toBe(SHARDS);
    }, POLL);
    for (const [i, prefix] of layout.prefixes.entries()) {
      const key = jobStreamKey(prefix, 'busy');
      await control.xadd(key, '*', 'n', String(i));
      readers[i].subscribe(key, '0-0', (entries) => got[i].push(...entries.map(([, f]) => f[1])), () => {});
    }
    await vi.waitFor(() => expect(got).toEqual(layout.prefixes.map((_, i) => [String(i)])), POLL);
  }, 120_000);
});
