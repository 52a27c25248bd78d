import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { FlowProducer, QueueEvents } from 'bullmq';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../producers/app.js';
import { cachedVerifier } from '../producers/auth.js';
import { createJobProducer } from '../shared/queue/job-producer.js';
import { createFairSchedulerFromConfig } from '../shared/fair/from-config.js';
import { createOrgPlanStore } from '../shared/infra/db/org-plans.js';
import { syncOrgPlans } from '../shared/fair/org-plans-sync.js';
import { createJobService } from '../producers/job-service.js';
import type { AgentRegistry } from '../shared/agents/registry.js';
import { configuredModels, type Config } from '../shared/core/config.js';
import { Registry } from 'prom-client';
import { createOpsMetrics } from '../shared/ops/metrics.js';
import { countingAdmission } from '../producers/counting-admission.js';
import { createAdmission } from '../producers/admission.js';
import { createApiKeyStore } from '../shared/infra/db/api-keys.js';
import { createOrgStore } from '../shared/infra/db/orgs.js';
import { createQuotaChecker } from '../shared/infra/db/quotas.js';
import { createAdmissionLimiter } from '../shared/limits/admission-limiter.js';
import type { Feature, FeatureDeps } from './feature.js';
import type { Infra } from '../shared/infra/infra.js';
import type { Logger } from '../shared/core/logger.js';
import { createAgentQueue, type AgentQueue } from '../shared/queue/agent-queue.js';
import { QUEUE } from '../shared/core/queue-names.js';
import { createRedis, logConnectionErrors, whenReady } from '../shared/infra/redis/connection.js';
import { createWorkerGuards } from '../workers/guards/index.js';
import { createWorkerService, type WorkerService } from '../workers/worker-service.js';
import { agentqPrefix, readinessKey } from '../shared/core/queue-keys.js';
import { tracingEnabled } from './tracing.js';
import type { BatchApi } from '../shared/infra/llm/batch-api.js';
import { createBatchStore } from '../shared/batch/batch-store.js';
import { createBatchTier } from '../workers/batch-tier.js';

export type FeatureFactory = (deps: FeatureDeps) => Feature;

export function retentionOf(cfg: Config) {
  return {
    attempts: cfg.JOB_ATTEMPTS,
    keepCompletedCount: cfg.KEEP_COMPLETED_COUNT,
    keepCompletedAgeS: cfg.KEEP_COMPLETED_AGE_S,
    keepFailedCount: cfg.KEEP_FAILED_COUNT,
    keepFailedAgeS: cfg.KEEP_FAILED_AGE_S,
  };
}

export interface Runtime {
  deps: FeatureDeps;
  queue: AgentQueue;
  features: Feature[];
  /** Present when the runtime serves HTTP. */
  app?: FastifyInstance;
  /** Starts one more agent worker in this process (the worker role starts one). */
  startWorker(): Promise<WorkerService>;
  close(graceMs: number): Promise<void>;
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
  const queue = createAgentQueue({ connection: redis, prefix: cfg.QUEUE_PREFIX, retention: retentionOf(cfg) });
  logConnectionErrors(queue, logger, 'agent queue');
  let events: { queueEvents: QueueEvents; connection: ReturnType<typeof createRedis> } | undefined;
  const queueEvents = () => {
    // Created on the first long poll: one blocking XREAD connection per process, shared by all waiters.
    if (!events) {
      const connection = createRedis(infra.redisTarget, 'worker');
      events = { connection, queueEvents: new QueueEvents(QUEUE.agent, { connection, prefix: cfg.QUEUE_PREFIX }) };
      logConnectionErrors(events.queueEvents, logger, 'agent queue events');
    }
    return events.queueEvents;
  };
  const orgs = createOrgStore({ pool: infra.db.pool });
  const quotas = createQuotaChecker({ pool: infra.db.pool });
  // One id per runtime: it labels this process's Node metrics and names its field in the metrics exchange.
  const metrics = createOpsMetrics(new Registry(), { processId: `${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}` });
  const admission = countingAdmission(createAdmission({
    limiter: createAdmissionLimiter({ redis, prefix: agentqPrefix(cfg.QUEUE_PREFIX), plans: cfg.RATE_LIMIT_PLANS }),
    planOf: async (orgId) => (await orgs.get(orgId))?.ratePlan,
    quota: (orgId) => quotas.check(orgId),
    defaultPlan: cfg.RATE_LIMIT_PLAN_DEFAULT,
    cacheMs: cfg.QUOTA_CACHE_MS,
  }), () => metrics);
  const scheduler = createFairSchedulerFromConfig({ redis, queue, cfg });
  // Plans live in Postgres; the dispatcher reads its copy in Redis, refreshed at every start.
  await syncOrgPlans({ plans: createOrgPlanStore({ pool: infra.db.pool }), scheduler });
  const flowProducer = new FlowProducer({ connection: redis, prefix: cfg.QUEUE_PREFIX });
  logConnectionErrors(flowProducer, logger, 'flow producer');
  const producer = createJobProducer({
    queue,
    agents: registry,
    models: { fast: cfg.GEMINI_MODEL_FAST, pro: cfg.GEMINI_MODEL_PRO },
    allowedModels: configuredModels(cfg),
    ...(fair ? { scheduler } : {}),
    retention: retentionOf(cfg),
    admission,
    flows: flowProducer,
    tierPolicy: { flexMinDeadlineS: cfg.TIER_FLEX_MIN_DEADLINE_S, batchMinDeadlineS: cfg.TIER_BATCH_MIN_DEADLINE_S },
  });
  const batchStore = createBatchStore({ redis, prefix: cfg.QUEUE_PREFIX });
  const jobs = createJobService({ queue, queueEvents, redis, prefix: cfg.QUEUE_PREFIX, cancelledTtlS: cfg.KEEP_FAILED_AGE_S, scheduler, batchView: (id) => batchStore.view(id) });
  const deps: FeatureDeps = { cfg, infra, logger, registry, redis, queue, producer, jobs, scheduler, metrics, llm: opts.llm, batchStore, ...(opts.batches ? { batches: opts.batches } : {}) };
  const batch = opts.batches ? createBatchTier({ store: batchStore, batches: opts.batches, deadlineMarginMs: cfg.BATCH_DEADLINE_MARGIN_MS }) : undefined;
  const features = (opts.features ?? []).map((make) => make(deps));
  const workers: WorkerService[] = [];
  const workerResources: Array<{ close(): Promise<void> }> = [];

  async function startWorker(): Promise<WorkerService> {
    const guards = createWorkerGuards({ cfg, infra, logger, llm: opts.llm, agents: registry });
    workerResources.push(guards);
    // The worker's claims, releases and dispatches run on a worker connection: they wait out a Redis restart
    // or a cluster failover as BullMQ's own worker commands do, where the API connection's command timeout
    // would fail a claim (the job retried on a second attempt) or a release (a slot held until its lease lapses).
    const fairRedis = fair ? createRedis(infra.redisTarget, 'worker', { enableAutoPipelining: true }) : undefined;
    if (fairRedis) workerResources.push({ close: async () => fairRedis.disconnect() });
    const workerScheduler = fairRedis ? createFairSchedulerFromConfig({ redis: fairRedis, queue, cfg }) : undefined;
    const worker = createWorkerService({ cfg, infra, logger, registry, redis, llm: opts.llm, guards: guards.middlewares, prepareLookup: guards.prepareLookup, features, ...(workerScheduler ? { scheduler: workerScheduler } : {}), ...(batch ? { batch } : {}) });
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
        redis: () => redis.exists(readinessKey(cfg.QUEUE_PREFIX)),
        database: () => infra.db.pool.query('SELECT 1'),
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
    queue,
    features,
    app,
    startWorker,
    async close(graceMs) {
      await app?.close();
      await Promise.all(workers.map((w) => w.close(graceMs)));
      for (const g of workerResources) await g.close();
      for (const f of features) await f.close?.();
      await events?.queueEvents.close();
      events?.connection.disconnect();
      await flowProducer.close();
      await queue.close();
      redis.disconnect();
    },
  };
}
