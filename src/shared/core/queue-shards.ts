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
 * The first slot of the k-th of `count` equal slot ranges, rounded as `redis-cli --cluster create` rounds its
 * primaries' ranges (primary j of P starts at round(j x 16384 / P)): with S a multiple of P each primary then
 * owns exactly S / P shards. Earlier versions rounded up (`ceilRangeStart`), which put a tag on the slot where a
 * primary's range begins into the shard before it: one primary held a shard more, another one fewer.
 */
const rangeStart = (k: number, count: number) => Math.round((k * SLOTS) / count);
const ceilRangeStart = (k: number, count: number) => Math.ceil((k * SLOTS) / count);

/** Shard k's prefix: the prefix's `{tag}` as `{tag.s<k>}` (or `{tag.s<k>.<n>}`, the first n whose slot is in range k). */
function shardPrefixes(prefix: string, count: number, start: (k: number, count: number) => number): string[] {
  const tag = /\{([^}]+)\}/.exec(prefix);
  if (!tag) throw new RangeError(`with more than one queue shard the prefix must contain a {hash tag}: ${prefix}`);
  return Array.from({ length: count }, (_, k) => {
    const lo = start(k, count);
    const hi = start(k + 1, count);
    for (let n = 0; ; n++) {
      const shardTag = n === 0 ? `${tag[1]}.s${k}` : `${tag[1]}.s${k}.${n}`;
      const slot = calculateSlot(`{${shardTag}}`);
      if (slot >= lo && slot < hi) return prefix.replace(tag[0], `{${shardTag}}`);
    }
  });
}

/**
 * One shard is today's layout: the configured prefix. With S > 1 the prefix's `{tag}` becomes `{tag.s<k>}`
 * (or `{tag.s<k>.<n>}`) so that shard k's slot falls in the k-th of S equal slot ranges (`rangeStart`): a cluster
 * whose primaries own equal ranges (what `redis-cli --cluster create` makes) then holds S / primaries shards on
 * each, whatever the tag's name.
 */
export function queueShards(prefix: string, count: number): QueueShards {
  if (!Number.isInteger(count) || count < 1) throw new RangeError(`queue shard count must be a positive integer: ${count}`);
  if (count === 1) return { prefixes: [prefix], ofOrg: () => 0, prefixOf: () => prefix };
  const prefixes = shardPrefixes(prefix, count, rangeStart);
  return { prefixes, ofOrg: (orgId) => shardOfOrg(orgId, count), prefixOf: (orgId) => prefixes[shardOfOrg(orgId, count)] };
}

/**
 * The shard prefixes earlier versions chose for `count` (ranges rounded up): the same as `queueShards` but for a
 * tag whose slot lies on a range's edge. Read only to find jobs left under such a prefix (shard-layout.ts).
 */
export function earlierShardPrefixes(prefix: string, count: number): string[] {
  return count === 1 ? [prefix] : shardPrefixes(prefix, count, ceilRangeStart);
}

/** A stable, evenly spread shard of an org id (not the slot hash: org ids alike would crowd one range). */
export function shardOfOrg(orgId: string, count: number): number {
  return createHash('sha256').update(orgId).digest().readUInt32BE(0) % count;
}
