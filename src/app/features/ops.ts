import { Queue } from 'bullmq';
import { createApiKeyStore } from '../../shared/infra/db/api-keys.js';
import { createRunStore } from '../../shared/infra/db/agent-runs.js';
import type { Feature, FeatureDeps } from '../feature.js';
import { createCircuitBreaker } from '../../shared/limits/circuit-breaker.js';
import { QUEUE } from '../../shared/core/queue-names.js';
import { createRedis } from '../../shared/infra/redis/connection.js';
import { adminRoutes, keyRoutes, orgPlanRoutes, dlqRoutes, usageDashboardRoutes, usageRoutes } from '../../producers/area-routes.js';
import { createBreakerCheck } from '../../workers/ops/dlq-breaker-check.js';
import { createDlqStore } from '../../shared/ops/dlq-store.js';
import { shardedDlqStore } from '../../shared/ops/sharded-dlq-store.js';
import { createDlqReprocessor } from '../../workers/ops/dlq-reprocessor.js';
import { createDlqService } from '../../shared/ops/dlq-service.js';
import { createBoardActions } from '../../shared/ops/board-actions.js';
import { createMaintenance } from '../../workers/ops/maintenance.js';

import { createOrgPlanStore } from '../../shared/infra/db/org-plans.js';
import { createFairOrphanSweep } from '../../workers/ops/fair-orphans.js';
import { createSemanticCacheSweep } from '../../workers/ops/semantic-cache-sweep.js';
import { createMetricsExchange } from '../../shared/ops/metrics-exchange.js';
import { breakerKeysIn, createScrapeGauges } from '../../producers/scrape-gauges.js';
import { attachOpsListeners } from '../../workers/ops/worker-listeners.js';
import { logConnectionErrors } from '../../shared/infra/redis/connection.js';
import { agentqPrefix, usageStreamKey } from '../../shared/core/queue-keys.js';

export const DLQ_REPROCESS_TASK = 'dlq-reprocess';
export const FAIR_ORPHANS_TASK = 'fair-orphans';
export const SEMANTIC_CACHE_SWEEP_TASK = 'semantic-cache-sweep';

/**
 * Operations: the dead-letter queue (classification, API, scheduled reprocessing), Bull Board, Prometheus
 * metrics aggregated over processes, the usage report, org plans and an org's API keys.
 */
export function opsFeature(deps: FeatureDeps): Feature {
  const { cfg, logger, registry } = deps;
  const log = logger.child({ component: 'ops' });
  const metrics = deps.metrics;
  // Process-wide state (maintenance schedules, breakers, the metrics exchange) stays under QUEUE_PREFIX;
  // each queue shard (app/cell.ts) has its own agent and flows queues and dead-letter entries.
  const prefix = cfg.QUEUE_PREFIX;
  const agentQueues = deps.cells.map((c) => c.queue as unknown as Queue);
  const flows = deps.cells.map((c) => new Queue(QUEUE.flows, { connection: deps.redis, prefix: c.prefix }));
  const maintenanceQueue = new Queue(QUEUE.maintenance, { connection: deps.redis, prefix });
  const queues = [...agentQueues, ...flows, maintenanceQueue];
  // Outlives the failed job it describes by a day, so a count is never lost while the job is still there.
  const dlqStores = new Map(deps.cells.map((c) => [c.prefix, createDlqStore({ redis: deps.redis, queue: c.queue, prefix: c.prefix, ttlS: cfg.KEEP_FAILED_AGE_S + 24 * 3600 })]));
  const store = shardedDlqStore(dlqStores);
  // Bull Board's removals and retries of a shard's agent jobs (and of its flows' parents) go through agentq.
  const shards = deps.cells.map((c, i) => ({
    agent: agentQueues[i],
    parents: [flows[i]],
    actions: createBoardActions({ redis: deps.redis, prefix: c.prefix, queue: c.queue, scheduler: c.scheduler, dlq: dlqStores.get(c.prefix)! }),
  }));
  for (const q of flows) logConnectionErrors(q, log, 'flows queue (ops)');
  logConnectionErrors(maintenanceQueue, log, 'maintenance queue');
  // Same prefix as the workers' guards (src/workers/guards/index.ts); only read here.
  const breaker = createCircuitBreaker({ redis: deps.redis, prefix: agentqPrefix(prefix) });
  const dlq = createDlqService({ store, validateInput: (agent, action, input) => registry.validateInput(agent, action, input) });
  const exchange = createMetricsExchange({ redis: deps.redis, prefix, registry: metrics.registry, logger: log, ...(metrics.processId ? { processId: metrics.processId } : {}) });
  const configuredModels = [cfg.GEMINI_MODEL_FAST, cfg.GEMINI_MODEL_PRO];

  const breakerCheck = createBreakerCheck({ cfg, registry, state: (key) => breaker.state(key) });

  const reprocessor = createDlqReprocessor({
    store,
    service: dlq,
    maxRetries: cfg.DLQ_MAX_RETRIES,
    batch: cfg.DLQ_BATCH,
    logger: log,
    blocked: (e) => breakerCheck.blocked(e),
  });

  let maintenance: ReturnType<typeof createMaintenance> | undefined;
  let maintenanceConnection: ReturnType<typeof createRedis> | undefined;

  return {
    name: 'ops',

    async routes(app) {
      const scrape = createScrapeGauges({
        queues,
        agentQueues,
        breakerState: (key) => breaker.state(key),
        // An org lives in one shard: the shards' lists never share an org.
        orgGauges: async () => (await Promise.all(deps.cells.map((c) => c.scheduler.gauges()))).flat(),
        usageBacklog: async () => (await Promise.all(deps.cells.map((c) => deps.redis.xlen(usageStreamKey(c.prefix))))).reduce((a, b) => a + b, 0),
        breakerKeys: async () => [...new Set([...configuredModels.map((m) => `gemini:${m}`), ...(await breakerKeysIn(deps.redis, agentqPrefix(prefix)))])],
      });
      dlqRoutes(app, { dlq });
      const runs = createRunStore({ pool: deps.infra.db.pool, embeddingModel: cfg.GEMINI_EMBEDDING_MODEL });
      usageRoutes(app, { runs });
      usageDashboardRoutes(app, { runs });
      keyRoutes(app, { keys: createApiKeyStore({ pool: deps.infra.db.pool }) });
      orgPlanRoutes(app, { plans: createOrgPlanStore({ pool: deps.infra.db.pool }), schedulerOf: (orgId) => deps.cellOf(orgId).scheduler });
      await app.register(async (admin) => adminRoutes(admin, { readOnly: cfg.BULL_BOARD_READ_ONLY, queues, shards, metrics: { collect: () => exchange.collect(), scrape } }));
      exchange.start();
    },

    onDelay: (_ctx, reason, delayMs) => metrics.delayed(reason, delayMs),
    onModelCall: (e) => metrics.modelCall(e),
    onEmbeddingRecorded: (spend) => metrics.embeddingRecorded('attempt', spend),
    onUsageCommitted: (lagsMs) => metrics.usageCommitted(lagsMs),
    onUsageRefused: (rows) => metrics.usageRefused(rows),

    attachWorker(worker) {
      attachOpsListeners(worker, { store, metrics, logger: log });
      exchange.start();
    },

    async startBackground() {
      const sweeps = deps.cells.map((c) =>
        createFairOrphanSweep({ queue: c.queue, scheduler: c.scheduler, agents: registry, models: { fast: cfg.GEMINI_MODEL_FAST, pro: cfg.GEMINI_MODEL_PRO }, logger: log }),
      );
      const sweepEveryCell = async () => {
        const total = { scanned: 0, laned: 0 };
        for (const sweep of sweeps) {
          const r = await sweep();
          total.scanned += r.scanned;
          total.laned += r.laned;
        }
        return total;
      };
      maintenanceConnection = createRedis(deps.infra.redisTarget, 'worker');
      maintenance = createMaintenance({
        queue: maintenanceQueue,
        connection: maintenanceConnection,
        prefix,
        logger: log,
        tasks: [
          { name: DLQ_REPROCESS_TASK, everyMs: cfg.DLQ_REPROCESS_EVERY_MS, run: () => reprocessor.run() },
          {
            name: FAIR_ORPHANS_TASK,
            everyMs: 60_000,
            run: sweepEveryCell,
          },
          {
            name: SEMANTIC_CACHE_SWEEP_TASK,
            everyMs: cfg.SEMANTIC_CACHE_SWEEP_EVERY_MS,
            run: createSemanticCacheSweep({ pool: deps.infra.db.pool, batchSize: cfg.SEMANTIC_CACHE_SWEEP_BATCH, maxBatches: 100, logger: log }),
          },
        ],
      });
      await maintenance.start();
    },

    async stopBackground(graceMs) {
      await maintenance?.close(graceMs);
      maintenanceConnection?.disconnect();
    },

    async close() {
      await exchange.close();
      for (const q of flows) await q.close();
      await maintenanceQueue.close();
    },
  };
}
