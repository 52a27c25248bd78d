import type { RedisClient, RedisTarget } from '../shared/infra/redis/connection.js';
import type { Config } from '../shared/core/config.js';
import { createRunStore } from '../shared/infra/db/agent-runs.js';
import { createRunAppender } from '../shared/infra/db/run-stream.js';
import { createPricing } from '../shared/infra/llm/pricing.js';
import { createRunSink } from '../shared/infra/db/run-sink.js';
import type { Infra } from '../shared/infra/infra.js';
import type { Logger } from '../shared/core/logger.js';
import type { AgentRegistry } from '../shared/agents/registry.js';
import { createVectorSearch } from '../shared/knowledge/vector-search.js';
import { createAutoPipelining, type AutoPipelining } from '../shared/infra/redis/auto-pipelining.js';
import { createRedis, whileReachable } from '../shared/infra/redis/connection.js';
import { subscribeShardChannel } from '../shared/infra/redis/shard-channel.js';
import { createAgentWorker } from './agent-worker.js';
import { declaredSearch } from './declared-search.js';
import { createAgentCall, type GenerateFn } from './call-agent.js';
import { compose, type Middleware } from './middleware.js';
import { createAgentProcessor, type ProcessorDeps } from './processor.js';
import { ECANCELLED } from '../shared/core/outcomes.js';
import type { WorkerHooks } from './worker-hooks.js';
import { hostname } from 'node:os';
import { randomUUID } from 'node:crypto';
import { cancelRequestedKey, fairKickChannel, usageSinkGroup, usageStreamKey } from '../shared/core/queue-keys.js';
import { createBufferAsk, createDispatchLoop, type FairScheduler, type SharedBufferAsk } from '../shared/fair/index.js';
import { fairEntryOf } from '../shared/queue/fair-entry.js';
import { createFairGate } from './fair-gate.js';
import type { BatchTier } from './batch-tier.js';
import { createConcurrencyPool, type ConcurrencyPool } from './concurrency-pool.js';
import type { UsageBacklog } from './usage-backlog.js';

export interface WorkerService {
  ready(): Promise<void>;
  isRunning(): boolean;
  /** False while a usage backlog over USAGE_BACKLOG_MAX_ROWS holds this worker (no new job taken). */
  takingJobs(): boolean;
  close(graceMs: number): Promise<void>;
}

/** Wires one BullMQ worker for agent jobs: guards (outermost first) around the model call. */
export function createWorkerService(opts: {
  cfg: Config;
  infra: Infra;
  logger: Logger;
  registry: AgentRegistry;
  /** The process's shared command connection (cancel markers). */
  redis: Pick<RedisClient, 'get' | 'del'>;
  llm: GenerateFn & { embed(texts: string[], opts?: { taskType?: string }): Promise<number[][]> };
  guards: Middleware[];
  /** What the fair claim carries for the result cache guard (`ShardGuards.prepareClaim`). */
  prepareClaim?: ProcessorDeps['prepareClaim'];
  features?: WorkerHooks[];
  /**
   * The fair dispatcher (every process builds it from the same config: shared/fair/from-config.ts), on a worker
   * connection of its own (app/runtime.ts). Absent
   * only in the bench's baseline (runtime `fairDispatch: false`): no dispatch loop, no gate.
   */
  scheduler?: FairScheduler;
  /** The batch tier's attempt side (absent: batch-tier jobs run on the standard tier). */
  batch?: BatchTier;
  /** The queue shard this worker consumes (app/cell.ts); default QUEUE_PREFIX. */
  prefix?: string;
  /** The process-wide concurrency this worker shares with the other shards' workers (default: its own). */
  pool?: ConcurrencyPool;
  /** The process's auto-pipelining switch, fed by `pool` (runtime.ts); default: one fed by this worker's own pool. */
  pipelining?: AutoPipelining;
  /**
   * The process's dispatch buffer, shared with the other shards' workers as the pool is (QUEUE_SHARDS > 1,
   * buffer-ask.ts `createSharedBufferAsk`). Absent: this worker asks for the whole process's share.
   */
  buffer?: SharedBufferAsk;
  /**
   * Connections the queue shards' workers of one process share (app/runtime.ts), closed by their owner after
   * every worker: BullMQ's command connection (each worker still opens its own blocking one), the pub/sub
   * subscriber and the usage appender's. Absent: this worker opens and closes its own.
   */
  shared?: WorkerConnections;
  /**
   * The usage backlog of every queue shard's stream together (QUEUE_SHARDS > 1, one per process: usage-backlog.ts),
   * which holds every shard's worker of the process. Absent: this worker's stream alone is judged.
   */
  backlog?: UsageBacklog;
  /** Blocks a model in every queue shard's dispatcher (QUEUE_SHARDS > 1, see fair-gate.ts); default: this shard's. */
  blockModel?: FairScheduler['blockModel'];
}): WorkerService {
  const { cfg, infra, logger } = opts;
  const prefix = opts.prefix ?? cfg.QUEUE_PREFIX;
  const pipelining = opts.pipelining ?? createAutoPipelining(cfg.REDIS_AUTO_PIPELINING);
  const slots = (opts.pool ?? createConcurrencyPool(cfg.WORKER_CONCURRENCY, pipelining.inFlight)).member();
  const own = opts.shared ? undefined : createWorkerConnections(infra.redisTarget, pipelining);
  const { connection, subscriber, usageRedis } = opts.shared ?? own!;
  const models = { fast: cfg.GEMINI_MODEL_FAST, pro: cfg.GEMINI_MODEL_PRO };
  const scheduler = opts.scheduler;
  const processId = `${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`;
  // This process's share of the dispatch buffer: the dispatcher sizes BullMQ's wait list by live workers'
  // asks; a moved ask rides on the worker's next claim (or a dispatch call of its own when none comes soon).
  // With queue shards, this shard's part of the one ask of the process (its pool's concurrency is shared too).
  const onAskChange = () => loop?.askMoved();
  const bufferAsk = !scheduler
    ? undefined
    : opts.buffer
      ? opts.buffer.member({ load: () => slots.load(), onChange: onAskChange })
      : createBufferAsk({ concurrency: cfg.WORKER_CONCURRENCY, ratio: cfg.DISPATCH_BUFFER_RATIO, floorMs: cfg.DISPATCH_BUFFER_MS, onChange: onAskChange });
  const loop = scheduler && bufferAsk ? createDispatchLoop({ scheduler, worker: { id: processId, concurrency: cfg.WORKER_CONCURRENCY, ask: bufferAsk.ask }, safetyPollMs: cfg.FAIR_SAFETY_POLL_MS, logger }) : undefined;
  const gate = scheduler && loop ? createFairGate({ scheduler, loop, logger, entryOf: (job) => fairEntryOf(job, opts.registry, models), ...(opts.blockModel ? { blockModel: opts.blockModel } : {}) }) : undefined;
  const features = opts.features ?? [];
  // Usage rows are written behind: appended to a Redis Stream on a worker connection (it waits out a
  // Redis outage instead of dropping the row), and moved to Postgres in batches by this process's sink.
  const usageKey = usageStreamKey(prefix);
  const sink = createRunSink({
    redis: createRedis(infra.redisTarget, 'worker'),
    key: usageKey,
    group: usageSinkGroup,
    consumer: processId,
    store: createRunStore({ pool: infra.db.pool }),
    claimIdleMs: cfg.USAGE_SINK_CLAIM_IDLE_MS,
    blockMs: cfg.USAGE_SINK_BLOCK_MS,
    onCommitted: (lags) => features.forEach((f) => f.onUsageCommitted?.(lags)),
    onRefused: (rows) => features.forEach((f) => f.onUsageRefused?.(rows.length)),
    ...(opts.backlog ? { onLength: () => opts.backlog!.seen() } : { backlogMax: cfg.USAGE_BACKLOG_MAX_ROWS, onBacklog: (over: boolean, rows: number) => backlogBrake(over, rows) }),
    logger,
  });
  // The embedding model's price, for the attempts' estimated embedding usage (PRICES_JSON applies as to every call).
  const pricing = createPricing(cfg.PRICES_JSON);
  const textSinks = features.flatMap((f) => (f.onText ? [f.onText] : []));
  const search = createVectorSearch({ pool: infra.db.pool, embed: (texts) => opts.llm.embed(texts, { taskType: 'RETRIEVAL_QUERY' }) });
  const call = createAgentCall({
    llm: opts.llm,
    // The query's embedding call goes on the attempt's row (estimated: Gemini reports no usage for embeddings), counted
    // once it is made: a table read that then fails (Postgres down, the job deferred) does not undo the call.
    searchFor: (orgId, declared, ctx) =>
      declaredSearch((o) => search.search(o, { onEmbedded: async (e) => ctx.embedded?.(e.texts) }), orgId, declared, { agent: ctx.agentName, action: ctx.actionName }),
    onText: (ctx) => {
      if (!ctx.job.data.stream) return undefined;
      const sinks = textSinks.map((make) => make(ctx)).filter((s) => s !== undefined);
      return sinks.length ? async (text) => void (await Promise.all(sinks.map((sink) => sink(text)))) : undefined;
    },
    onAnswer: (ctx) => features.forEach((f) => f.onAnswer?.(ctx)),
    onModelCall: (e) => features.forEach((f) => f.onModelCall?.(e)),
    captureContent: cfg.OTEL_CAPTURE_CONTENT,
    ...(opts.batch ? { batch: opts.batch } : {}),
  });
  const processor = createAgentProcessor({
    agents: opts.registry,
    chain: compose(opts.guards, call),
    runs: createRunAppender({ redis: usageRedis, key: usageKey, rider: sink.rider }),
    models,
    logger,
    gate,
    ...(opts.prepareClaim ? { prepareClaim: opts.prepareClaim } : {}),
    cancelRequested: async ({ id, timestamp }) => {
      const mark = await opts.redis.get(cancelRequestedKey(prefix, id));
      // '1': any job of the id (a marker written before markers named the job they cancel, or a pipeline run's
      // cancel for a step not made yet, whose id no other job takes).
      return mark === '1' || mark === String(timestamp);
    },
    onDelay: (ctx, reason, delayMs) => features.forEach((f) => f.onDelay?.(ctx, reason, delayMs)),
    // When the run ends, not on BullMQ's completed / failed events: an attempt that lost its lock gets neither, and
    // its run took a job from the wait list all the same (it counted for nothing until 2026-12-07).
    ...(bufferAsk ? { onFinished: () => bufferAsk.finished() } : {}),
    databaseDelay: { firstMs: cfg.DB_UNAVAILABLE_DELAY_MS, maxMs: cfg.DB_UNAVAILABLE_MAX_DELAY_MS },
    ...(opts.batch ? { batchFailed: (job) => opts.batch!.settleFailed(job) } : {}),
    embeddingCost: (tokens) => pricing.cost(cfg.GEMINI_EMBEDDING_MODEL, { input: tokens, output: 0 }).costUsd,
    embeddingModel: cfg.GEMINI_EMBEDDING_MODEL,
    onEmbeddingRecorded: (spend) => features.forEach((f) => f.onEmbeddingRecorded?.(spend)),
  });
  const worker = createAgentWorker({
    connection,
    subscriber,
    prefix,
    processor,
    slots,
    concurrency: cfg.WORKER_CONCURRENCY,
    lockDurationMs: cfg.LOCK_DURATION_MS,
    stalledIntervalMs: cfg.STALLED_INTERVAL_MS,
    backoff: { baseMs: cfg.BACKOFF_BASE_MS, maxMs: cfg.BACKOFF_MAX_MS },
    ...(gate ? { retryDelay: (job, backoffMs) => gate.retryDelay(job, backoffMs) } : {}),
    logger,
  });
  slots.attach(worker.worker);
  for (const f of features) f.attachWorker?.(worker.worker);
  let closing = false;
  /**
   * Usage rows are not reaching Postgres and the stream holds USAGE_BACKLOG_MAX_ROWS of them: this process takes
   * no new job (jobs running finish; nothing is lost, jobs wait in their queue) until the sinks have written it
   * back to 80 %. Every worker process sees the same streams (with queue shards, their total: usage-backlog.ts), so
   * the whole fleet stops and starts together.
   */
  function backlogBrake(over: boolean, rows: number): void {
    if (closing) return;
    if (over) {
      logger.error({ rows, max: cfg.USAGE_BACKLOG_MAX_ROWS }, 'usage rows are not being written (Postgres down?): this worker takes no new job until the backlog is written');
      void worker.worker.pause(true).catch((err: unknown) => logger.warn({ err }, 'could not pause the worker'));
    } else {
      logger.warn({ rows }, 'usage backlog written down: this worker takes jobs again');
      worker.worker.resume();
    }
  }
  const detachBacklog = opts.backlog?.attach((over, rows) => backlogBrake(over, rows));
  // A slot goes back once BullMQ recorded the outcome; a retry is parked and re-laned after its backoff.
  if (gate) {
    worker.worker.on('completed', (job) => gate.finished(job));
    worker.worker.on('failed', (job) => {
      if (job?.id) gate.finished(job);
    });
  }
  // A run that ended cancelled takes its cancel marker with it: left for its TTL, the marker would cancel the
  // next run of the same id at its claim (a DLQ retry, Bull Board's retry, an idempotency key sent again).
  worker.worker.on('failed', (job, err) => {
    if (!job?.id || (err as { code?: unknown }).code !== ECANCELLED) return;
    void opts.redis.del(cancelRequestedKey(prefix, job.id)).catch((delErr: unknown) => logger.warn({ err: delErr, jobId: job.id }, 'could not clear the cancel marker of a cancelled job'));
  });
  // Producers that do not dispatch themselves (the direct producer) ask a worker to, over pub/sub.
  const kickChannel = fairKickChannel(prefix);
  const onKick = (ch: string) => ch === kickChannel && void loop?.kick();
  subscriber.on('smessage', onKick);
  const kick = subscribeShardChannel(subscriber, kickChannel, {
    onError: (err) => logger.warn({ err }, 'could not subscribe to the fair kick channel again; retrying'),
  });
  return {
    ready: async () => {
      await kick.subscribed;
      await worker.ready();
      sink.start();
      await loop?.kick();
    },
    isRunning: () => worker.worker.isRunning(),
    /** False while the usage backlog holds this worker (see backlogBrake). */
    takingJobs: () => !worker.worker.isPaused(),
    async close(graceMs) {
      closing = true;
      detachBacklog?.();
      await worker.close(graceMs);
      slots.leave();
      subscriber.off('smessage', onKick);
      kick.close();
      // The last releases and dispatch go to Redis on the scheduler's worker connection, which holds them while
      // Redis is down: not waited for then (this worker's connection, to the same Redis, tells). The slots they
      // would have freed come back with the lease sweep, as after a crash.
      if (!(await whileReachable(connection, gate?.close()))) logger.warn('fair gate: Redis unreachable at close; any slot not released yet is freed by the lease sweep');
      await whileReachable(connection, loop?.close());
      await sink.close();
      own?.close();
    },
  };
}

export interface WorkerConnections {
  connection: RedisClient;
  subscriber: RedisClient;
  usageRedis: RedisClient;
  close(): void;
}

/** The connections a worker needs beside its blocking ones (one set per process, shared by its shards' workers). */
export function createWorkerConnections(target: RedisTarget, pipelining: AutoPipelining): WorkerConnections {
  const connection = createRedis(target, 'worker');
  const subscriber = createRedis(target, 'subscriber');
  // Auto-pipelined while the process has enough jobs in flight (auto-pipelining.ts): the rows that concurrent
  // jobs append in one tick leave in one socket write (BullMQ's own connection is left as BullMQ configures it).
  const usageRedis = pipelining.follow(createRedis(target, 'worker'));
  return {
    connection,
    subscriber,
    usageRedis,
    close() {
      usageRedis.disconnect();
      connection.disconnect();
      subscriber.disconnect();
    },
  };
}

/** The workers of every queue shard of one process, run and reported on as one. */
export function combineWorkers(services: WorkerService[]): WorkerService {
  if (services.length === 1) return services[0];
  return {
    ready: async () => void (await Promise.all(services.map((s) => s.ready()))),
    isRunning: () => services.every((s) => s.isRunning()),
    takingJobs: () => services.every((s) => s.takingJobs()),
    close: async (graceMs) => void (await Promise.all(services.map((s) => s.close(graceMs)))),
  };
}
