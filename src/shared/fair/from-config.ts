import type { Config } from '../core/config.js';
import type { RedisClient } from '../infra/lua.js';
import { modelLimitsFromConfig } from '../limits/model-limits.js';
import { agentqPrefix, fairKickChannel, fairPrefixes } from '../core/queue-keys.js';
import { createModelLeases } from './model-leases.js';
import { createFairScheduler, type FairScheduler } from './fair-scheduler.js';
import type { QueueKeySource } from './fair-keys.js';

/** The fair scheduler every process builds from the same configuration, so all of them decide alike. */
export function createFairSchedulerFromConfig(opts: {
  redis: RedisClient;
  queue: QueueKeySource;
  cfg: Config;
  /** The queue shard's prefix (app/cell.ts); default the configured one. */
  prefix?: string;
  /** How many queue shards there are (default 1): with more, each leases from the models' global buckets. */
  shards?: number;
  onLeaseError?: (err: unknown, model: string) => void;
}): FairScheduler {
  const { cfg } = opts;
  const shards = opts.shards ?? 1;
  const limits = modelLimitsFromConfig(cfg.MODEL_LIMITS);
  // The models' global limits: stored by every enqueue, and what the shards lease from.
  const modelLimits = (model: string) => ({ rpm: limits.modelRpm(model), tpm: limits.modelTpm(model), orgRpm: cfg.MODEL_LIMITS[model]?.orgRpm });
  // One shard: its model buckets are the global ones (same keys, same tag). More: each shard holds a reservoir.
  const leases = shards > 1 ? createModelLeases({ redis: opts.redis, bucketPrefix: agentqPrefix(cfg.QUEUE_PREFIX), limits: modelLimits, shards }) : undefined;
  const prefix = opts.prefix ?? cfg.QUEUE_PREFIX;
  return createFairScheduler({
    ...(leases ? { leases } : {}),
    ...(opts.onLeaseError ? { onLeaseError: opts.onLeaseError } : {}),
    redis: opts.redis,
    queue: opts.queue,
    ...fairPrefixes(prefix),
    // What a call without a dispatch loop here leaves for one (a wake-up, a capped lane woken) goes to the workers'.
    kick: () => opts.redis.spublish(fairKickChannel(prefix), '1'),
    defaults: { weight: cfg.ORG_WEIGHT, concurrency: cfg.ORG_CONCURRENCY, rpm: { pro: cfg.ORG_RPM_PRO, flash: cfg.ORG_RPM_FLASH }, tpm: cfg.ORG_TPM },
    modelLimits,
    leaseMs: cfg.FAIR_LEASE_MS,
    bufferRatio: cfg.DISPATCH_BUFFER_RATIO,
  });
}
