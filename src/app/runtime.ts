import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../producers/app.js';
import { cachedVerifier } from '../producers/auth.js';
import { createOrgPlanStore } from '../shared/infra/db/org-plans.js';
import { syncOrgPlans } from '../shared/fair/org-plans-sync.js';
import type { AgentRegistry } from '../shared/agents/registry.js';
import type { Config } from '../shared/core/config.js';
import { Registry } from 'prom-client';
import { createOpsMetrics } from '../shared/ops/metrics.js';
import { countingAdmission } from '../producers/counting-admission.js';
import { createAdmission } from '../producers/admission.js';
import { createApiKeyStore } from '../shared/infra/db/api-keys.js';
import { createOrgStore } from '../shared/infra/db/orgs.js';
import { createQuotaChecker } from '../shared/infra/db/quotas.js';
import { probeDatabase } from '../shared/infra/db/pool.js';
import { READINESS_TIMEOUT_MS } from '../producers/routes/health.js';
import { createAdmissionLimiter } from '../shared/limits/admission-limiter.js';
import { createDailyJobLedger } from '../shared/limits/daily-jobs.js';
import type { Feature, FeatureDeps } from './feature.js';
import type { Infra } from '../shared/infra/infra.js';
import type { Logger } from '../shared/core/logger.js';
import { retentionOf, type AgentQueue } from '../shared/queue/agent-queue.js';
import { queueShards } from '../shared/core/queue-shards.js';
import { adoptShardLayout } from '../shared/queue/shard-layout.js';
import { createCell } from './cell.js';
import { routeJobService, routeProducer } from './cell-routing.js';
import { createAutoPipelining } from '../shared/infra/redis/auto-pipelining.js';
import { createRedis, whenReady } from '../shared/infra/redis/connection.js';
import { createWorkerGuards } from '../workers/guards/index.js';
import { combineWorkers, createWorkerConnections, createWorkerService, type WorkerService } from '../workers/worker-service.js';
import { createConcurrencyPool } from '../workers/concurrency-pool.js';
import { createFairSchedulerFromConfig } from '../shared/fair/from-config.js';
import { createSharedBufferAsk } from '../shared/fair/buffer-ask.js';
import { agentqPrefix, readinessKey, usageStreamKey } from '../shared/core/queue-keys.js';
import { createUsageBacklog } from '../workers/usage-backlog.js';
import { tracingEnabled } from './tracing.js';
import type { BatchApi } from '../shared/infra/llm/batch-api.js';
import { createBatchTier } from '../workers/batch-tier.js';
import { createCloseSteps, type CloseSteps } from './shutdown.js';

export type FeatureFactory = (deps: FeatureDeps) => Feature;

export interface Runtime {
  deps: FeatureDeps;
  /** The agent queue of the first queue shard (with one shard, the queue). */
  queue: AgentQueue;
  features: Feature[];
  /** Present when the runtime serves HTTP. */
  app?: FastifyInstance;
  /** Starts one more agent worker in this process (the worker role starts one). */
  startWorker(): Promise<WorkerService>;
  /**
   * Drains within `graceMs` and closes everything, each part whatever the others did; rejects naming the parts
   * that failed. `steps` (shutdown.ts) names them for the process's shutdown deadline.
   */
  close(graceMs: number, steps?: CloseSteps): Promise<void>;
}

/**
 * The composition root shared by `main.ts` and the test stack: the queue, the producer, the API (when
 * `api`), agent workers and feature background work (when `worker`), all from injected infrastructure.
 */
export async function startRuntime(opts: {
  cfg: Config;
  infra: Infra;
  logger: Logger;
  registry: AgentRegistry;
  llm: FeatureDeps['llm'];
  /** Gemini Batch Mode; without it batch-tier jobs run on the standard tier. */
  batches?: BatchApi;
  api: boolean;
  worker: boolean;
  features?: FeatureFactory[];
  /**
   * Bench baseline only (bench/cases/fairness.ts measures what the dispatcher costs): `false` adds jobs
   * straight to BullMQ's wait list and runs workers without the fair gate, i.e. no org share, cap or rate
   * plan is enforced at dispatch. Never set in production.
   */
  fairDispatch?: boolean;
}): Promise<Runtime> {
  const { cfg, infra, logger, registry } = opts;
  const fair = opts.fairDispatch !== false;
  const redis = createRedis(infra.redisTarget, 'api', { commandTimeout: cfg.REDIS_COMMAND_TIMEOUT_MS });
  await whenReady(redis);
  const orgs = createOrgStore({ pool: infra.db.pool });
  const quotas = createQuotaChecker({ pool: infra.db.pool });
  // One id per runtime: it labels this process's Node metrics and names its field in the metrics exchange.
  const metrics = createOpsMetrics(new Registry(), { processId: `${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}` });
  const shards = queueShards(cfg.QUEUE_PREFIX, cfg.QUEUE_SHARDS);
  const layout = await adoptShardLayout({ redis, prefix: cfg.QUEUE_PREFIX, shards: cfg.QUEUE_SHARDS });
  if (layout.changed) logger.warn({ from: layout.previous, to: cfg.QUEUE_SHARDS }, 'queue shard count changed (the old layout held no unfinished job)');
  // Each org's admission window lives in its queue shard, beside the rest of its keys.
  const limiters = shards.prefixes.map((prefix) => createAdmissionLimiter({ redis, prefix: agentqPrefix(prefix), plans: cfg.RATE_LIMIT_PLANS }));
  // So is its count of the day's jobs against its daily job limit.
  const dailyJobs = shards.prefixes.map((prefix) => createDailyJobLedger({ redis, prefix: agentqPrefix(prefix) }));
  const admission = countingAdmission(createAdmission({
    limiter: { plans: limiters[0].plans, consume: (orgId, plan, points) => limiters[shards.ofOrg(orgId)].consume(orgId, plan, points) },
    planOf: async (orgId) => (await orgs.get(orgId))?.ratePlan,
    quota: (orgId, dayStartMs) => quotas.read(orgId, dayStartMs),
    dailyJobs: (orgId) => dailyJobs[shards.ofOrg(orgId)],
    defaultPlan: cfg.RATE_LIMIT_PLAN_DEFAULT,
    cacheMs: cfg.QUOTA_CACHE_MS,
  }), () => metrics);
  const cells = shards.prefixes.map((prefix, index) => createCell({ index, prefix, shards: shards.prefixes.length, cfg, infra, logger, registry, redis, retention: retentionOf(cfg), admission, fair }));
  const cellOf = (orgId: string) => cells[shards.ofOrg(orgId)];
  // Plans live in Postgres; each dispatcher reads its copy in Redis (its shard's orgs), refreshed at every start.
  await syncOrgPlans({ plans: createOrgPlanStore({ pool: infra.db.pool }), scheduler: { setPlan: (orgId, plan) => cellOf(orgId).scheduler.setPlan(orgId, plan) } });
  const producer = routeProducer(cells, cellOf);
  const jobs = routeJobService(cells, cellOf);
  const deps: FeatureDeps = { cfg, infra, logger, registry, redis, producer, jobs, cells, shards, cellOf, metrics, budget: (orgId) => quotas.check(orgId), llm: opts.llm, ...(opts.batches ? { batches: opts.batches } : {}) };
  const features = (opts.features ?? []).map((make) => make(deps));
  const workers: WorkerService[] = [];
  const workerResources: Array<{ name: string; close(): Promise<void> }> = [];

  /** One BullMQ worker per queue shard, all under this call's one WORKER_CONCURRENCY. */
  async function startWorker(): Promise<WorkerService> {
    // The worker's command connections auto-pipeline by the jobs in flight in the process (REDIS_AUTO_PIPELINING).
    const pipelining = createAutoPipelining(cfg.REDIS_AUTO_PIPELINING);
    const pool = createConcurrencyPool(cfg.WORKER_CONCURRENCY, pipelining.inFlight);
    // One dispatch buffer for the process too, split over the shards by where the jobs are (buffer-ask.ts): an
    // ask of the whole concurrency's share per shard held up to QUEUE_SHARDS times it dispatched and not running.
    const buffer = cells.length > 1 ? createSharedBufferAsk({ concurrency: cfg.WORKER_CONCURRENCY, ratio: cfg.DISPATCH_BUFFER_RATIO, floorMs: cfg.DISPATCH_BUFFER_MS, shards: cells.length }) : undefined;
    // The worker's claims, releases and dispatches run on a worker connection: they wait out a Redis restart
    // or a cluster failover as BullMQ's own worker commands do, where the API connection's command timeout
    // would fail a claim (the job retried on a second attempt) or a release (a slot held until its lease lapses).
    const fairRedis = fair ? pipelining.follow(createRedis(infra.redisTarget, 'worker')) : undefined;
    if (fairRedis) workerResources.push({ name: 'fair dispatch connection', close: async () => fairRedis.disconnect() });
    // One set of guards for the process (one breaker, shared connections), a chain per shard.
    const guards = createWorkerGuards({ cfg, infra, logger, llm: opts.llm, agents: registry, queuePrefixes: cells.map((c) => c.prefix), pipelining });
    workerResources.push({ name: 'worker guards', close: () => guards.close() });
    const leaseError = (err: unknown, model: string) => logger.warn({ err, model }, 'fair dispatch: lease from the global model buckets failed');
    // One command connection, subscriber and usage appender for every shard's worker (each BullMQ worker still
    // has its own blocking connection): 3 connections a process instead of 3 a shard.
    const shared = cells.length > 1 ? createWorkerConnections(infra.redisTarget, pipelining) : undefined;
    // USAGE_BACKLOG_MAX_ROWS bounds the rows of every shard's usage stream together, and holds every shard's worker.
    const backlog = shared
      ? createUsageBacklog({
          max: cfg.USAGE_BACKLOG_MAX_ROWS,
          lengths: () => Promise.all(cells.map((c) => shared.connection.xlen(usageStreamKey(c.prefix)))),
          onError: (err) => logger.warn({ err }, 'usage backlog: the usage streams\' lengths could not be read'),
        })
      : undefined;
    if (backlog) workerResources.push({ name: 'usage backlog', close: async () => backlog.close() });
    if (shared) workerResources.push({ name: 'worker connections', close: async () => shared.close() });
    const schedulers = cells.map((cell) => (fairRedis ? createFairSchedulerFromConfig({ redis: fairRedis, queue: cell.queue, cfg, prefix: cell.prefix, shards: cells.length, onLeaseError: leaseError }) : undefined));
    // A provider's 429 or an open breaker is the model's, not a shard's: its block goes to every shard's dispatcher.
    const blockModel = cells.length > 1 && fairRedis ? async (model: string, delayMs: number, reason: string) => void (await Promise.all(schedulers.map((sc) => sc!.blockModel(model, delayMs, reason)))) : undefined;
    const services = cells.map((cell, i) => {
      const shardGuards = guards.forShard(cell.prefix);
      const batch = opts.batches ? createBatchTier({ store: cell.batchStore, batches: opts.batches, deadlineMarginMs: cfg.BATCH_DEADLINE_MARGIN_MS }) : undefined;
      const scheduler = schedulers[i];
      return createWorkerService({ cfg, infra, logger, registry, redis, llm: opts.llm, guards: shardGuards.middlewares, prepareClaim: shardGuards.prepareClaim, features, prefix: cell.prefix, pool, pipelining, ...(buffer ? { buffer } : {}), ...(shared ? { shared } : {}), ...(backlog ? { backlog } : {}), ...(scheduler ? { scheduler } : {}), ...(blockModel ? { blockModel } : {}), ...(batch ? { batch } : {}) });
    });
    const worker = combineWorkers(services);
    await worker.ready();
    workers.push(worker);
    return worker;
  }

  let app: FastifyInstance | undefined;
  if (opts.api) {
    app = await buildApp({
      logger,
      bodyLimit: cfg.BODY_LIMIT_BYTES,
      keys: cachedVerifier(createApiKeyStore({ pool: infra.db.pool }), cfg.AUTH_CACHE_TTL_MS),
      adminToken: cfg.ADMIN_TOKEN,
      agents: registry,
      producer,
      jobs,
      longPollMaxMs: cfg.LONG_POLL_MAX_MS,
      enqueueDeadlineMs: cfg.ENQUEUE_DEADLINE_MS,
      tracing: tracingEnabled(cfg),
      readiness: {
        // One read in each shard's slot: on a cluster, ready means every primary holding a shard answers.
        redis: () => Promise.all(cells.map((c) => redis.exists(readinessKey(c.prefix)))),
        // Bounded and one at a time: probes of a database that never answers must not take the pool's connections.
        database: () => probeDatabase(infra.db.pool, READINESS_TIMEOUT_MS),
        ...(opts.worker ? { worker: async () => workers.every((w) => w.isRunning()) || Promise.reject(new Error('worker not running')) } : {}),
        ...Object.assign({}, ...features.map((f) => f.readiness ?? {})),
      },
      plugins: features.flatMap((f) => (f.routes ? [f.routes] : [])),
    });
  }
  if (opts.worker) {
    await startWorker();
    for (const f of features) await f.startBackground?.();
  }

  return {
    deps,
    queue: cells[0].queue,
    features,
    app,
    startWorker,
    async close(graceMs, steps = createCloseSteps(logger)) {
      // Together: the workers (the features' background ones too) stop taking jobs at once, not after the API's
      // last requests are answered, and drain in the same grace period.
      const api = app;
      await Promise.all([
        ...(api ? [steps.run('api', () => api.close())] : []),
        ...workers.map((w, i) => steps.run(`agent worker ${i}`, () => w.close(graceMs))),
        ...features.map((f) => steps.run(`feature ${f.name} background`, () => f.stopBackground?.(graceMs))),
      ]);
      // Each step runs whatever the one before it did: a failed close leaves nothing else open.
      for (const r of workerResources) await steps.run(r.name, () => r.close());
      for (const f of features) await steps.run(`feature ${f.name}`, () => f.close?.());
      for (const cell of cells) await steps.run(`cell ${cell.index}`, () => cell.close());
      redis.disconnect();
      if (steps.failed().length) throw new Error(`shutdown: ${steps.failed().join(', ')} failed to close`);
    },
  };
}
