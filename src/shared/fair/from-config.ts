import type { Config } from '../core/config.js';
import type { RedisClient } from '../infra/lua.js';
import { modelLimitsFromConfig } from '../limits/model-limits.js';
import { fairPrefixes } from '../core/queue-keys.js';
import { createFairScheduler, type FairScheduler } from './fair-scheduler.js';
import type { QueueKeySource } from './fair-keys.js';

/** The fair scheduler every process builds from the same configuration, so all of them decide alike. */
export function createFairSchedulerFromConfig(opts: {
  redis: RedisClient;
  queue: QueueKeySource;
  cfg: Config;
  /** The queue shard's prefix (app/cell.ts); default the configured one. */
  prefix?: string;
  /** How many queue shards split each model's global limits (default 1). */
  shards?: number;
}): FairScheduler {
  const { cfg } = opts;
  const limits = modelLimitsFromConfig(cfg.MODEL_LIMITS, opts.shards);
  return createFairScheduler({
    redis: opts.redis,
    queue: opts.queue,
    ...fairPrefixes(opts.prefix ?? cfg.QUEUE_PREFIX),
    defaults: { weight: cfg.ORG_WEIGHT, concurrency: cfg.ORG_CONCURRENCY, rpm: { pro: cfg.ORG_RPM_PRO, flash: cfg.ORG_RPM_FLASH }, tpm: cfg.ORG_TPM },
    modelLimits: (model) => ({ rpm: limits.modelRpm(model), tpm: limits.modelTpm(model), orgRpm: cfg.MODEL_LIMITS[model]?.orgRpm }),
    leaseMs: cfg.FAIR_LEASE_MS,
    bufferRatio: cfg.DISPATCH_BUFFER_RATIO,
  });
}
