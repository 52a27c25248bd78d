import { FlowProducer, QueueEvents } from 'bullmq';
import { createJobProducer, type JobProducer } from '../shared/queue/job-producer.js';
import { createFairSchedulerFromConfig } from '../shared/fair/from-config.js';
import type { FairScheduler } from '../shared/fair/index.js';
import { createJobService, type JobService } from '../producers/job-service.js';
import type { AdmissionCheck } from '../shared/queue/admission-check.js';
import type { AgentRegistry } from '../shared/agents/registry.js';
import { configuredModels, type Config } from '../shared/core/config.js';
import type { Logger } from '../shared/core/logger.js';
import type { Infra } from '../shared/infra/infra.js';
import { createAgentQueue, type AgentQueue, type RetentionOptions } from '../shared/queue/agent-queue.js';
import { QUEUE } from '../shared/core/queue-names.js';
import { fairKickChannel } from '../shared/core/queue-keys.js';
import { createRedis, logConnectionErrors, whileReachable, type RedisClient } from '../shared/infra/redis/connection.js';
import { createBatchStore, type BatchStore } from '../shared/batch/batch-store.js';

/**
 * One queue shard's share of a process (`QUEUE_SHARDS`, shared/core/queue-shards.ts): its queue, fair
 * dispatcher, producer, job service and batch state, all under the shard's prefix and so in one cluster slot.
 * Everything of an org lives in one cell; with one shard the cell is the whole keyspace under QUEUE_PREFIX.
 */
export interface Cell {
  index: number;
  prefix: string;
  queue: AgentQueue;
  scheduler: FairScheduler;
  producer: JobProducer;
  jobs: JobService;
  batchStore: BatchStore;
  close(): Promise<void>;
}

export function createCell(opts: {
  index: number;
  prefix: string;
  /** How many cells split the models' global limits. */
  shards: number;
  cfg: Config;
  infra: Infra;
  logger: Logger;
  registry: AgentRegistry;
  /** The process's fail-fast request connection, shared by every cell. */
  redis: RedisClient;
  retention: RetentionOptions;
  admission: AdmissionCheck;
  /** False only in the bench's baseline (runtime `fairDispatch: false`). */
  fair: boolean;
}): Cell {
  const { cfg, infra, logger, redis, prefix } = opts;
  const queue = createAgentQueue({ connection: redis, prefix, retention: opts.retention });
  logConnectionErrors(queue, logger, 'agent queue');
  let events: { queueEvents: QueueEvents; connection: RedisClient } | undefined;
  const queueEvents = () => {
    // Created on the first long poll: one blocking XREAD connection per cell, shared by all its waiters.
    if (!events) {
      const connection = createRedis(infra.redisTarget, 'worker');
      events = { connection, queueEvents: new QueueEvents(QUEUE.agent, { connection, prefix }) };
      logConnectionErrors(events.queueEvents, logger, 'agent queue events');
    }
    return events.queueEvents;
  };
  const scheduler = createFairSchedulerFromConfig({
    redis,
    queue,
    cfg,
    prefix,
    shards: opts.shards,
    onLeaseError: (err, model) => logger.warn({ err, model }, 'fair dispatch: lease from the global model buckets failed'),
  });
  const flowProducer = new FlowProducer({ connection: redis, prefix });
  logConnectionErrors(flowProducer, logger, 'flow producer');
  const producer = createJobProducer({
    queue,
    agents: opts.registry,
    models: { fast: cfg.GEMINI_MODEL_FAST, pro: cfg.GEMINI_MODEL_PRO },
    allowedModels: configuredModels(cfg),
    ...(opts.fair ? { scheduler } : {}),
    retention: opts.retention,
    admission: opts.admission,
    flows: flowProducer,
    tierPolicy: {
      flexMinDeadlineS: cfg.TIER_FLEX_MIN_DEADLINE_S,
      batchMinDeadlineS: cfg.TIER_BATCH_MIN_DEADLINE_S,
      batchDeadlineMarginMs: cfg.BATCH_DEADLINE_MARGIN_MS,
      batchMinTurnaroundS: cfg.BATCH_MIN_TURNAROUND_S,
    },
    // A wake-up the enqueue's dispatch left goes to the workers' loops (this process may have none).
    kick: () => redis.spublish(fairKickChannel(prefix), '1'),
  });
  const batchStore = createBatchStore({ redis, prefix });
  const jobs = createJobService({ queue, queueEvents, redis, prefix, cancelledTtlS: cfg.KEEP_FAILED_AGE_S, scheduler, batchView: (id) => batchStore.view(id), batchCancel: (id, ts) => batchStore.cancel(id, ts) });
  return {
    index: opts.index,
    prefix,
    queue,
    scheduler,
    producer,
    jobs,
    batchStore,
    async close() {
      // BullMQ's close waits for its own (duplicated) blocking connection to end, which never happens while that
      // connection is reconnecting to a Redis that is down: not waited for then (the one it was made from tells).
      if (events) await whileReachable(events.connection, events.queueEvents.close());
      events?.connection.disconnect();
      await flowProducer.close();
      await queue.close();
    },
  };
}
