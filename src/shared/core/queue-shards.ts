import { createHash } from 'node:crypto';
import calculateSlot from 'cluster-key-slot';

/** Redis Cluster's slot count. */
const SLOTS = 16384;

/** How orgs spread over queue shards: each shard is a whole agentq keyspace under its own `{hash tag}`. */
export interface QueueShards {
  /** The queue prefix of each shard, in shard order; one shard keeps the configured prefix unchanged. */
  prefixes: readonly string[];
  /** The shard (index into `prefixes`) that holds everything of one org. */
  ofOrg(orgId: string): number;
  /** The queue prefix of that shard. */
  prefixOf(orgId: string): string;
}

/**
 * One shard is today's layout: the configured prefix. With S > 1 the prefix's `{tag}` becomes `{tag.s<k>}`
 * (or `{tag.s<k>.<n>}`, the first n that lands there) so that shard k's slot falls in the k-th of S equal
 * slot ranges: a cluster whose primaries own equal ranges (what `redis-cli --cluster create` makes) then
 * holds S / primaries shards on each, whatever the tag's name.
 */
export function queueShards(prefix: string, count: number): QueueShards {
  if (!Number.isInteger(count) || count < 1) throw new RangeError(`queue shard count must be a positive integer: ${count}`);
  if (count === 1) return { prefixes: [prefix], ofOrg: () => 0, prefixOf: () => prefix };
  const tag = /\{([^}]+)\}/.exec(prefix);
  if (!tag) throw new RangeError(`with more than one queue shard the prefix must contain a {hash tag}: ${prefix}`);
  const prefixes = Array.from({ length: count }, (_, k) => {
    const lo = Math.ceil((k * SLOTS) / count);
    const hi = Math.ceil(((k + 1) * SLOTS) / count);
    for (let n = 0; ; n++) {
      const shardTag = n === 0 ? `${tag[1]}.s${k}` : `${tag[1]}.s${k}.${n}`;
      const slot = calculateSlot(`{${shardTag}}`);
      if (slot >= lo && slot < hi) return prefix.replace(tag[0], `{${shardTag}}`);
    }
  });
  return { prefixes, ofOrg: (orgId) => shardOfOrg(orgId, count), prefixOf: (orgId) => prefixes[shardOfOrg(orgId, count)] };
}

/** A stable, evenly spread shard of an org id (not the slot hash: org ids alike would crowd one range). */
export function shardOfOrg(orgId: string, count: number): number {
  return createHash('sha256').update(orgId).digest().readUInt32BE(0) % count;
}
