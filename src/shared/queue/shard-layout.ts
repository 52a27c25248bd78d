import { Queue } from 'bullmq';
import type { RedisClient } from '../infra/redis/connection.js';
import { ConfigError } from '../core/config.js';
import { shardLayoutKey } from '../core/queue-keys.js';
import { QUEUE } from '../core/queue-names.js';
import { earlierShardPrefixes, queueShards } from '../core/queue-shards.js';

/** Job states that still have work to do: a job in one of them would be stranded by a new layout. */
const UNFINISHED = ['waiting', 'active', 'delayed', 'prioritized', 'waiting-children'] as const;

/**
 * QUEUE_SHARDS decides which shard holds each org's jobs, so changing it moves every org's lookups to a new
 * place: jobs left unfinished under the old layout would never run or be found again. The layout in force
 * is recorded under QUEUE_PREFIX (one key); a process started with another shard count takes over only if
 * the old layout's queues hold no unfinished job (it was drained), and otherwise refuses to start.
 * No record is a layout of one shard (deployments older than QUEUE_SHARDS). The same holds for a shard whose
 * prefix an earlier version chose otherwise (queue-shards.ts `earlierShardPrefixes`): its unfinished jobs must be
 * drained by that version first.
 */
export async function adoptShardLayout(opts: { redis: RedisClient; prefix: string; shards: number }): Promise<{ previous: number; changed: boolean }> {
  const key = shardLayoutKey(opts.prefix);
  const previous = await recordedShards(opts.redis, opts.prefix);
  const old = queueShards(opts.prefix, previous).prefixes;
  // Usually none: only a shard whose tag an earlier version placed on a slot range's edge moved.
  const moved = earlierShardPrefixes(opts.prefix, previous).filter((p) => !old.includes(p));
  if (previous === opts.shards) {
    const stranded = moved.length ? await countUnfinished(opts.redis, moved) : 0;
    if (stranded > 0) {
      throw new ConfigError(
        `Invalid environment variable QUEUE_SHARDS=${opts.shards}: ${stranded} unfinished job(s) wait under shard prefixes an earlier agentq version chose (${moved.join(', ')}), ` +
          `which this version places elsewhere; drain them with that version first (see README "Scaling out")`,
      );
    }
    await opts.redis.set(key, String(opts.shards), 'NX');
    return { previous, changed: false };
  }
  const unfinished = await countUnfinished(opts.redis, [...old, ...moved]);
  if (unfinished > 0) {
    throw new ConfigError(
      `Invalid environment variable QUEUE_SHARDS=${opts.shards}: the queue is laid out in ${previous} shard(s) and ${unfinished} job(s) there are unfinished; ` +
        `drain them with QUEUE_SHARDS=${previous} first (see README "Scaling out")`,
    );
  }
  await opts.redis.set(key, String(opts.shards));
  return { previous, changed: true };
}

/** The shard count in force under `prefix`: 1 without a record (a deployment older than QUEUE_SHARDS). */
async function recordedShards(redis: RedisClient, prefix: string): Promise<number> {
  return Number((await redis.get(shardLayoutKey(prefix))) ?? 1);
}

/**
 * For a process that enqueues or reads beside the deployment without running it (the direct producer, the CLIs):
 * it must find each org's shard where the workers and the API do, so it takes the recorded layout and never
 * changes it. A count the host's environment does not give is the recorded one (a host service has no reason to
 * repeat QUEUE_SHARDS, and one that guessed 1 would enqueue jobs no worker runs and the API never finds); a count
 * it gives that differs is a misconfiguration, refused rather than followed either way.
 */
export async function followShardLayout(opts: { redis: RedisClient; prefix: string; shards?: number }): Promise<number> {
  const recorded = await recordedShards(opts.redis, opts.prefix);
  if (opts.shards !== undefined && opts.shards !== recorded) {
    throw new ConfigError(
      `Invalid environment variable QUEUE_SHARDS=${opts.shards}: the queue under ${opts.prefix} is laid out in ${recorded} shard(s) (recorded in Redis by its workers and API); ` +
        `set QUEUE_SHARDS=${recorded} or leave it unset`,
    );
  }
  return recorded;
}

async function countUnfinished(redis: RedisClient, prefixes: readonly string[]): Promise<number> {
  let total = 0;
  for (const prefix of prefixes) {
    for (const name of [QUEUE.agent, QUEUE.flows]) {
      const queue = new Queue(name, { connection: redis, prefix });
      try {
        const counts = await queue.getJobCounts(...UNFINISHED);
        total += UNFINISHED.reduce((n, state) => n + (counts[state] ?? 0), 0);
      } finally {
        await queue.close();
      }
    }
  }
  return total;
}
