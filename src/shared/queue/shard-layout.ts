import { Queue } from 'bullmq';
import { logConnectionErrors, type RedisClient } from '../infra/redis/connection.js';
import { ConfigError } from '../core/config.js';
import { shardLayoutKey, usageStreamKey } from '../core/queue-keys.js';
import { QUEUE } from '../core/queue-names.js';
import { earlierShardPrefixes, queueShards } from '../core/queue-shards.js';

/** Job states that still have work to do: a job in one of them would be stranded by a new layout. */
const UNFINISHED = ['waiting', 'active', 'delayed', 'prioritized', 'waiting-children'] as const;

/**
 * QUEUE_SHARDS decides which shard holds each org's jobs, so changing it moves every org's lookups to a new
 * place: jobs left unfinished under the old layout would never run or be found again. The layout in force
 * is recorded under QUEUE_PREFIX (one key); a process started with another shard count takes over only if
 * the old layout's queues hold no unfinished job and its usage streams no row not yet written to Postgres (it
 * was drained), and otherwise refuses to start.
 * No record is a layout of one shard (deployments older than QUEUE_SHARDS). The same holds for a shard whose
 * prefix an earlier version chose otherwise (queue-shards.ts `earlierShardPrefixes`): its unfinished jobs and
 * unwritten usage rows must be drained by that version first.
 */
export async function adoptShardLayout(opts: { redis: RedisClient; prefix: string; shards: number }): Promise<{ previous: number; changed: boolean }> {
  const key = shardLayoutKey(opts.prefix);
  const previous = await recordedShards(opts.redis, opts.prefix);
  const old = queueShards(opts.prefix, previous).prefixes;
  // Usually none: only a shard whose tag an earlier version placed on a slot range's edge moved.
  const moved = earlierShardPrefixes(opts.prefix, previous).filter((p) => !old.includes(p));
  if (previous === opts.shards) {
    const stranded = moved.length ? await leftWork(opts.redis, moved) : NONE;
    if (stranded.jobs + stranded.rows > 0) {
      throw new ConfigError(
        `Invalid environment variable QUEUE_SHARDS=${opts.shards}: ${describeLeft(stranded, 'wait')} under shard prefixes an earlier agentq version chose (${moved.join(', ')}), ` +
          `which this version places elsewhere; drain them with that version first (see README "Scaling out")`,
      );
    }
    await opts.redis.set(key, String(opts.shards), 'NX');
    return { previous, changed: false };
  }
  const left = await leftWork(opts.redis, [...old, ...moved]);
  if (left.jobs + left.rows > 0) {
    throw new ConfigError(
      `Invalid environment variable QUEUE_SHARDS=${opts.shards}: the queue is laid out in ${previous} shard(s) and ${describeLeft(left, 'are')}; ` +
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

interface LeftWork {
  /** Jobs in an unfinished state. */
  jobs: number;
  /** Usage rows of finished attempts not yet written to `agent_runs`. */
  rows: number;
}
const NONE: LeftWork = { jobs: 0, rows: 0 };

function describeLeft(left: LeftWork, verb: 'are' | 'wait'): string {
  const parts: string[] = [];
  if (left.jobs > 0) parts.push(verb === 'are' ? `${left.jobs} job(s) there are unfinished` : `${left.jobs} unfinished job(s) wait`);
  if (left.rows > 0) parts.push(verb === 'are' ? `${left.rows} usage row(s) there are not yet written to Postgres` : `${left.rows} usage row(s) not yet written to Postgres wait`);
  return parts.join(' and ');
}

/**
 * A layout's unfinished jobs, and its usage rows still on their way to Postgres: each shard's usage stream is read
 * only by the sinks of the layout in force, so rows a slow or down Postgres left there would never be written
 * (nor billed) once the processes restart under another layout.
 */
async function leftWork(redis: RedisClient, prefixes: readonly string[]): Promise<LeftWork> {
  return { jobs: await countUnfinished(redis, prefixes), rows: await countUnwrittenUsage(redis, prefixes) };
}

/**
 * The stream's length is exactly its rows not yet written (pending or never delivered): the sink deletes an
 * entry in the call that acknowledges it (includes/usage-ride.lua, XACK + XDEL), so no written row stays.
 */
async function countUnwrittenUsage(redis: RedisClient, prefixes: readonly string[]): Promise<number> {
  let total = 0;
  for (const prefix of prefixes) total += await redis.xlen(usageStreamKey(prefix));
  return total;
}

async function countUnfinished(redis: RedisClient, prefixes: readonly string[]): Promise<number> {
  let total = 0;
  for (const prefix of prefixes) {
    for (const name of [QUEUE.agent, QUEUE.flows]) {
      const queue = new Queue(name, { connection: redis, prefix });
      // No logger here: an error of the caller's connection rejects getJobCounts, which the caller reports.
      logConnectionErrors(queue, undefined, `${name} (shard layout check)`);
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
