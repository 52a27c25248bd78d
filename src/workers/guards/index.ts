import { LRUCache } from 'lru-cache';
import type { Config } from '../../shared/core/config.js';
import { createResultCache } from '../../shared/cache/result-cache.js';
import { answerFromMemory, cacheKeyPartsOf, createResultCacheGuard } from './result-cache-guard.js';
import { createSemanticCache } from '../../shared/cache/semantic-cache.js';
import { createSemanticCacheGuard } from './semantic-cache-guard.js';
import { createQuotaChecker, type QuotaDecision } from '../../shared/infra/db/quotas.js';
import { createBreakerGuard } from './breaker-guard.js';
import { createCircuitBreaker, type CircuitBreaker } from '../../shared/limits/circuit-breaker.js';
import { createRateLimitGuard } from './rate-limit-guard.js';
import { modelLimitsFromConfig } from '../../shared/limits/model-limits.js';
import { createTokenBuckets } from '../../shared/limits/token-bucket.js';
import type { Infra } from '../../shared/infra/infra.js';
import type { Logger } from '../../shared/core/logger.js';
import { createAutoPipelining, type AutoPipelining } from '../../shared/infra/redis/auto-pipelining.js';
import { createRedis, whileReachable } from '../../shared/infra/redis/connection.js';
import type { AgentResult } from '../../shared/core/types.js';
import { DelayJobError, type ClaimPrep, type JobContext, type Middleware } from '../middleware.js';
import { createRouteGuard } from './route-guard.js';
import { agentqPrefix } from '../../shared/core/queue-keys.js';
import { guardEvent } from '../../shared/telemetry/tracing.js';

/** The guards of one queue shard's worker (app/cell.ts): the chain and what its claim carries. */
export interface ShardGuards {
  middlewares: Middleware[];
  /** The result cache guard's first lookup for `ctx`, or its answer from memory, for the fair claim (`ClaimPrep`). */
  prepareClaim(ctx: JobContext): ClaimPrep;
}

export interface WorkerGuards {
  /** The chain for the worker of the queue shard under `queuePrefix` (one of those the guards were built for). */
  forShard(queuePrefix: string): ShardGuards;
  breaker: CircuitBreaker;
  close(): Promise<void>;
}

/** At most one "quotas cannot be read" warning per this long: every job would say it during an outage. */
const QUOTA_UNREADABLE_WARN_MS = 10_000;

/**
 * The org's durable monthly budget (USD) checked at every attempt's start (`check`: quotas.ts `check`). Not the
 * daily job limit: it counts new jobs, reserved at admission, and a retry, a DLQ replay or a delayed job is not
 * one (counted here from agent_runs, a job's own earlier attempt held it until midnight once the org reached
 * its limit). Decisions are remembered for `cacheMs`, so a burst can overshoot the budget by what starts
 * within that window; in exchange the hot path does not query Postgres per job.
 *
 * Postgres unreachable: the org's last decision stands, however old; an org not checked since the process
 * started runs. Failing the job instead would spend its attempts on the outage and send every job of every
 * org to the DLQ within seconds, while its usage row waits in Redis like any other (the usage backlog brake,
 * USAGE_BACKLOG_MAX_ROWS, bounds how much runs unrecorded).
 */
export function createQuotaGuard(check: (orgId: string) => Promise<QuotaDecision>, cacheMs: number, clock?: { now(): number }): Middleware {
  // ttlResolution 0: no 1 ms timer armed to cache the clock (one per job on a busy worker; see result-cache.ts).
  const cache = new LRUCache<string, QuotaDecision>({ max: 10_000, ttl: Math.max(1, cacheMs), ttlResolution: 0, fetchMethod: (orgId) => check(orgId), allowStaleOnFetchRejection: true, ...(clock ? { perf: clock } : {}) });
  let warnedAt = 0;
  // Without caching (cacheMs 0) every job reads anew, and the cache still keeps each org's last decision.
  // A failed read with no earlier decision to fall back on resolves undefined (allowStaleOnFetchRejection).
  const read = (orgId: string) => cache.fetch(orgId, cacheMs > 0 ? {} : { forceRefresh: true });
  const unreadable = (ctx: JobContext, err?: unknown): QuotaDecision => {
    if (Date.now() - warnedAt >= QUOTA_UNREADABLE_WARN_MS) {
      warnedAt = Date.now();
      ctx.logger.warn({ err }, 'org quotas cannot be read (Postgres unreachable?): jobs of orgs without a known decision run');
    }
    return { allowed: true };
  };
  return async (ctx, next) => {
    const decision = (await read(ctx.orgId).catch((err: unknown) => unreadable(ctx, err))) ?? unreadable(ctx);
    guardEvent(ctx.span, 'agentq.guard.quota', decision.allowed ? { 'agentq.quota.allowed': true } : { 'agentq.quota.allowed': false, 'agentq.quota.retry_in_ms': decision.retryAfterS * 1000 });
    if (!decision.allowed) {
      ctx.logger.warn({ reason: decision.reason }, 'org quota reached; job waits');
      throw new DelayJobError(decision.retryAfterS * 1000, 'quota');
    }
    return next();
  };
}

/**
 * The guards around every model call, outermost first:
 *
 *   result cache -> semantic cache -> quota -> route (primary/fallback) -> rate limit -> breaker -> call
 *
 * Caches come first because a hit needs no model: it spends no rate-limit tokens, needs no breaker
 * probe and costs nothing. Routing sits outside the rate limiter and breaker so each try is limited and
 * broken per the model it actually calls, and an open primary breaker falls through to the fallback.
 */
export function createWorkerGuards(opts: {
  cfg: Config;
  infra: Infra;
  logger: Logger;
  llm: { embed(texts: string[]): Promise<number[][]> };
  agents: { get(name: string): import('../../shared/agents/define-agent.js').AgentDefinition | undefined };
  /**
   * The queue shards' prefixes (app/cell.ts; default [QUEUE_PREFIX]): each has its own result cache and the
   * token buckets it shares with its dispatcher. One breaker serves them all, under QUEUE_PREFIX: a model
   * that is down is down for every shard. Connections are shared too.
   */
  queuePrefixes?: readonly string[];
  /** The process's auto-pipelining switch (runtime.ts: fed by its jobs in flight); default: one of its own, never fed. */
  pipelining?: AutoPipelining;
}): WorkerGuards {
  const { cfg, infra } = opts;
  // Auto-pipelined while the process has enough jobs in flight (auto-pipelining.ts): the lookups, stores and
  // breaker records of concurrent jobs issued in one tick go out in one socket write instead of one write each (no
  // blocking command ever runs on this connection); with fewer, each command would pay for a pipeline of its own.
  const pipelining = opts.pipelining ?? createAutoPipelining(cfg.REDIS_AUTO_PIPELINING);
  const redis = pipelining.follow(createRedis(infra.redisTarget, 'worker'));
  const queuePrefixes = opts.queuePrefixes ?? [cfg.QUEUE_PREFIX];
  const breakerPrefix = agentqPrefix(cfg.QUEUE_PREFIX);
  // One subscribed connection hears both broadcasts (breaker and result-cache invalidations, each on its own
  // channel): a clean breaker's answer and an L1 hit are served from memory while it is subscribed.
  const invalidations = createRedis(infra.redisTarget, 'subscriber');
  const breaker = createCircuitBreaker({
    redis,
    subscriber: invalidations,
    logger: opts.logger,
    prefix: breakerPrefix,
    failureThreshold: cfg.BREAKER_FAILURE_THRESHOLD,
    successThreshold: cfg.BREAKER_SUCCESS_THRESHOLD,
    timeoutMs: cfg.BREAKER_TIMEOUT_MS,
    probeLeaseMs: cfg.LLM_TIMEOUT_MS + 30_000,
  });
  for (const event of ['open', 'halfOpen', 'close'] as const) {
    breaker.on(event, (key: string) => opts.logger.warn({ breaker: key, event }, `circuit breaker ${event}`));
  }
  const semanticCache = createSemanticCache({
    pool: infra.db.pool,
    embed: (texts) => opts.llm.embed(texts),
    threshold: cfg.SEMANTIC_CACHE_THRESHOLD,
    ttlS: cfg.SEMANTIC_CACHE_TTL_S,
  });
  const quotas = createQuotaChecker({ pool: infra.db.pool });

  // Process-wide: the caches and checks that do not depend on the shard, built once.
  const semanticGuard = createSemanticCacheGuard({ cache: semanticCache, logger: opts.logger });
  const quotaGuard = createQuotaGuard((orgId) => quotas.check(orgId), cfg.QUOTA_CACHE_MS);
  const routeGuard = createRouteGuard({
    routeFor: (agent, action) => cfg.AGENT_ROUTES[`${agent}:${action}`] ?? cfg.AGENT_ROUTES[agent],
    agents: opts.agents,
    backoffBaseMs: cfg.BACKOFF_BASE_MS,
  });
  const breakerGuard = createBreakerGuard({ breaker });
  const limits = modelLimitsFromConfig(cfg.MODEL_LIMITS);
  // With more than one queue shard the models' global buckets live under QUEUE_PREFIX, where the shards'
  // dispatchers lease from them (fair/model-leases.ts); with one they are the shard's own.
  const modelBuckets = queuePrefixes.length > 1 ? createTokenBuckets({ redis, prefix: agentqPrefix(cfg.QUEUE_PREFIX) }) : undefined;

  const shards = new Map<string, ShardGuards & { flush(): Promise<void> }>(
    queuePrefixes.map((queuePrefix) => {
      const prefix = agentqPrefix(queuePrefix);
      const resultCache = createResultCache<AgentResult>({
        redis,
        subscriber: invalidations,
        prefix,
        l1Max: cfg.CACHE_L1_MAX_ENTRIES,
        l1TtlMs: cfg.CACHE_L1_TTL_MS,
        l2TtlS: cfg.CACHE_TTL_S,
        waitTimeoutMs: cfg.LLM_TIMEOUT_MS + 30_000,
        logger: opts.logger,
      });
      // The shard's buckets are its dispatcher's (fairPrefixes: the same bucket prefix): a call no dispatch charged
      // takes the org's request through the dispatcher (JobContext.orgRequests) with these in the same call.
      const rateLimit = createRateLimitGuard({
        buckets: createTokenBuckets({ redis, prefix }),
        ...(modelBuckets ? { modelBuckets } : {}),
        limits,
        correctionFlushMs: 100,
        onError: (err) => opts.logger.warn({ err }, 'rate limit: token correction failed'),
      });
      // The result cache guard comes first: an answer from memory (`prepareClaim`) stands for the whole chain.
      const middlewares: Middleware[] = [createResultCacheGuard({ cache: resultCache }), semanticGuard, quotaGuard, routeGuard, rateLimit, breakerGuard];
      const prepareClaim = (ctx: JobContext): ClaimPrep => {
        // One parts object for both: `fromMemory` finds the key `prepare` computed by these parts' input.
        const parts = cacheKeyPartsOf(ctx);
        const lookup = resultCache.prepare(parts, ctx.job.id);
        if (lookup) return { lookup };
        const answer = answerFromMemory(resultCache, ctx, parts);
        return answer ? { answer } : {};
      };
      return [queuePrefix, { middlewares, prepareClaim, flush: () => rateLimit.flush() }];
    }),
  );
  return {
    forShard(queuePrefix) {
      const guards = shards.get(queuePrefix);
      if (!guards) throw new Error(`no guards for queue prefix ${queuePrefix}`);
      return guards;
    },
    breaker,
    async close() {
      // Corrections still pending go to Redis now, unless it is down (whileReachable): the buckets refill anyway.
      await whileReachable(redis, Promise.all([...shards.values()].map((g) => g.flush())));
      redis.disconnect();
      invalidations.disconnect();
    },
  };
}
