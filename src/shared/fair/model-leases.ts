import { defineLua, type RedisClient } from '../infra/lua.js';
import { guardKeys } from '../core/queue-keys.js';

/** What one queue shard's dispatcher lacks of a model: requests and tokens short for the lanes that wait. */
export interface LeaseWant {
  model: string;
  requests: number;
  tokens: number;
}

/** What the global buckets granted; nothing granted: `retryAtMs` (Redis time) is when the shortfall fits. */
export interface LeaseGrant {
  requests: number;
  tokens: number;
  retryAtMs?: number;
}

export interface ModelLeases {
  take(want: LeaseWant): Promise<LeaseGrant>;
}

/**
 * The tokens one lease asks for beyond the shortfall: about a second of the model's quota, so a busy shard
 * leases about once a second, and at most half the bucket spread over the shards, so every shard can hold a
 * chunk at once without emptying it. Tokens a shard holds and does not use lapse (fair-core-N.lua).
 */
export function leaseChunk(perMinute: number, shards: number): number {
  if (!(perMinute > 0) || !Number.isFinite(perMinute)) return 0;
  return Math.max(1, Math.min(Math.ceil(perMinute / 60), Math.floor(perMinute / (2 * shards))));
}

/**
 * A model's global RPM and TPM buckets, leased in chunks to the queue shards' dispatchers (QUEUE_SHARDS > 1):
 * each shard dispatches from its own reservoir in one atomic script in its own slot, and only a shard that
 * runs short takes from the global buckets, so a busy shard can use the quota an idle one does not (an even
 * split could not), and all shards together never exceed it. The global buckets are the ones the worker's
 * rate limiter takes from for calls the dispatcher did not charge (a fallback model).
 */
export function createModelLeases(opts: {
  redis: RedisClient;
  /** Guard prefix of the global buckets: `agentqPrefix(QUEUE_PREFIX)`, not a shard's. */
  bucketPrefix: string;
  limits: (model: string) => { rpm?: number; tpm?: number };
  shards: number;
}): ModelLeases {
  const lease = defineLua(opts.redis, 'model-lease-2.lua');
  return {
    async take(want) {
      const { rpm = 0, tpm = 0 } = opts.limits(want.model);
      const ask = (cap: number, short: number) => {
        if (!(cap > 0) || !(short > 0)) return [cap > 0 ? cap : 0, 0, 0];
        const min = Math.min(Math.ceil(short), cap);
        return [cap, min, Math.max(min, leaseChunk(cap, opts.shards))];
      };
      const keys = [guardKeys.tokenBucket(opts.bucketPrefix, `rpm:model:${want.model}`), guardKeys.tokenBucket(opts.bucketPrefix, `tpm:model:${want.model}`)];
      const [requests, tokens, waitMs, now] = (await lease(keys, [...ask(rpm, want.requests), ...ask(tpm, want.tokens)])) as number[];
      if (waitMs > 0) return { requests: 0, tokens: 0, retryAtMs: now + waitMs };
      // Nothing asked for: this process knows no limit where the shard's stored one has one (processes with
      // different MODEL_LIMITS). The lanes wait a second rather than ask again at once.
      if (requests === 0 && tokens === 0) return { requests: 0, tokens: 0, retryAtMs: now + 1000 };
      return { requests, tokens };
    },
  };
}
