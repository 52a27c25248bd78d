import type { Config } from '../shared/core/config.js';
import { createRunStore } from '../shared/infra/db/agent-runs.js';
import { createRunWriter } from '../shared/infra/db/run-writer.js';
import type { Infra } from '../shared/infra/infra.js';
import type { Logger } from '../shared/core/logger.js';
import type { AgentRegistry } from '../shared/agents/registry.js';
import { createVectorSearch } from '../shared/knowledge/vector-search.js';
import { createRedis } from '../shared/infra/redis/connection.js';
import { createAgentWorker } from './agent-worker.js';
import { createAgentCall, type GenerateFn } from './call-agent.js';
import { compose, type Middleware } from './middleware.js';
import { createAgentProcessor } from './processor.js';
import type { WorkerHooks } from './worker-hooks.js';

export interface WorkerRuntime {
  ready(): Promise<void>;
  isRunning(): boolean;
  close(graceMs: number): Promise<void>;
}

/** Wires one BullMQ worker for agent jobs: guards (outermost first) around the model call. */
export function createWorkerRuntime(opts: {
  cfg: Config;
  infra: Infra;
  logger: Logger;
  registry: AgentRegistry;
  llm: GenerateFn & { embed(texts: string[], opts?: { taskType?: string }): Promise<number[][]> };
  guards: Middleware[];
  features?: WorkerHooks[];
}): WorkerRuntime {
  const { cfg, infra, logger } = opts;
  const connection = createRedis(infra.redisUrl, 'worker');
  const subscriber = createRedis(infra.redisUrl, 'worker');
  const features = opts.features ?? [];
  const textSinks = features.flatMap((f) => (f.onText ? [f.onText] : []));
  const search = createVectorSearch({ pool: infra.db.pool, embed: (texts) => opts.llm.embed(texts, { taskType: 'RETRIEVAL_QUERY' }) });
  const call = createAgentCall({
    llm: opts.llm,
    searchFor: (orgId) => (query, o) => search.search({ query, orgId, ...o }),
    onText: (ctx) => {
      if (!ctx.job.data.stream) return undefined;
      const sinks = textSinks.map((make) => make(ctx)).filter((s) => s !== undefined);
      return sinks.length ? async (text) => void (await Promise.all(sinks.map((sink) => sink(text)))) : undefined;
    },
  });
  const processor = createAgentProcessor({
    agents: opts.registry,
    chain: compose(opts.guards, call),
    runs: createRunWriter(createRunStore({ pool: infra.db.pool })),
    models: { fast: cfg.GEMINI_MODEL_FAST, pro: cfg.GEMINI_MODEL_PRO },
    logger,
    onDelay: (ctx, reason, delayMs) => features.forEach((f) => f.onDelay?.(ctx, reason, delayMs)),
  });
  const worker = createAgentWorker({
    connection,
    subscriber,
    prefix: cfg.QUEUE_PREFIX,
    processor,
    concurrency: cfg.WORKER_CONCURRENCY,
    lockDurationMs: cfg.LOCK_DURATION_MS,
    stalledIntervalMs: cfg.STALLED_INTERVAL_MS,
    backoff: { baseMs: cfg.BACKOFF_BASE_MS, maxMs: cfg.BACKOFF_MAX_MS },
    logger,
  });
  for (const f of features) f.attachWorker?.(worker.worker);
  return {
    ready: () => worker.ready(),
    isRunning: () => worker.worker.isRunning(),
    async close(graceMs) {
      await worker.close(graceMs);
      connection.disconnect();
      subscriber.disconnect();
    },
  };
}
