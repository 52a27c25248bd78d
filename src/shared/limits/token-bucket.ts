import { defineLua, type RedisClient } from '../infra/lua.js';
import { guardKeys } from '../core/queue-keys.js';

export interface BucketRequest {
  /** Bucket name under the factory's prefix, e.g. `rpm:model:gemini-2.5-pro`. */
  key: string;
  /** Largest burst: the bucket holds at most this many tokens. */
  capacity: number;
  /** Continuous refill rate. */
  refillPerSec: number;
  /** Tokens this call needs (0 only checks nothing and always passes). */
  cost: number;
}

export interface TakeResult {
  allowed: boolean;
  /** 0 when allowed; otherwise the longest wait among the buckets that lack room. */
  msBeforeNext: number;
  /** The bucket that needs the longest wait, when refused. */
  limitedBy?: string;
  /** Redis `TIME` (epoch ms) at which the decision was made. */
  redisTimeMs: number;
}

export interface TokenBuckets {
  /** One atomic call: takes `cost` from every bucket, or from none. */
  take(requests: BucketRequest[]): Promise<TakeResult>;
  /** Charges `delta` more tokens (negative refunds), clamped to [-capacity, capacity]; returns the new level. */
  adjust(key: string, capacity: number, refillPerSec: number, delta: number): Promise<number>;
}

function checkShape(capacity: number, refillPerSec: number): void {
  if (!(capacity > 0) || !Number.isFinite(capacity)) throw new RangeError(`bucket capacity must be > 0, got ${capacity}`);
  if (!(refillPerSec > 0) || !Number.isFinite(refillPerSec)) throw new RangeError(`refillPerSec must be > 0, got ${refillPerSec}`);
}

/**
 * Token buckets shared by every process through Redis: state is `{tokens, ts}` per bucket, refilled
 * continuously from Redis `TIME`, so over any interval T the tokens admitted across all processes are
 * at most capacity + rate * T (for costs up to capacity). A full bucket is a missing key: keys expire
 * once refilled, so idle orgs and models cost no memory.
 */
export function createTokenBuckets(opts: { redis: RedisClient; prefix: string }): TokenBuckets {
  const takeLua = defineLua(opts.redis, 'token-bucket-take-N.lua');
  const adjustLua = defineLua(opts.redis, 'token-bucket-adjust-1.lua');
  const fullKey = (key: string) => guardKeys.tokenBucket(opts.prefix, key);

  return {
    async take(requests) {
      if (requests.length === 0) throw new RangeError('take() needs at least one bucket');
      const args: Array<string | number> = [];
      for (const r of requests) {
        checkShape(r.capacity, r.refillPerSec);
        if (!(r.cost >= 0) || !Number.isFinite(r.cost)) throw new RangeError(`cost must be >= 0, got ${r.cost}`);
        args.push(r.capacity, r.refillPerSec / 1000, r.cost);
      }
      const [allowed, ms, limiting, now] = (await takeLua(requests.map((r) => fullKey(r.key)), args)) as number[];
      return {
        allowed: allowed === 1,
        msBeforeNext: ms,
        ...(limiting > 0 ? { limitedBy: requests[limiting - 1].key } : {}),
        redisTimeMs: now,
      };
    },
    async adjust(key, capacity, refillPerSec, delta) {
      checkShape(capacity, refillPerSec);
      if (!Number.isFinite(delta)) throw new RangeError(`delta must be finite, got ${delta}`);
      return (await adjustLua([fullKey(key)], [capacity, refillPerSec / 1000, delta])) as number;
    },
  };
}
