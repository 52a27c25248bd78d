import type { FastifyInstance } from 'fastify';
import type { RedisClient } from '../shared/infra/redis/connection.js';
import type { JobProducer } from '../shared/queue/job-producer.js';
import type { JobService } from '../producers/job-service.js';
import type { OpsMetrics } from '../shared/ops/metrics.js';
import type { WorkerHooks } from '../workers/worker-hooks.js';
import type { AgentRegistry } from '../shared/agents/registry.js';
import type { Config } from '../shared/core/config.js';
import type { Infra } from '../shared/infra/infra.js';
import type { Logger } from '../shared/core/logger.js';
import type { BatchApi } from '../shared/infra/llm/batch-api.js';
import type { QueueShards } from '../shared/core/queue-shards.js';
import type { Cell } from './cell.js';
import type { QuotaDecision } from '../shared/infra/db/quotas.js';

/** What a feature is built from. Connections here are shared: a feature that blocks (XREAD, SUBSCRIBE) makes its own. */
export interface FeatureDeps {
  cfg: Config;
  infra: Infra;
  logger: Logger;
  registry: AgentRegistry;
  /** Fail-fast connection for request paths. */
  redis: RedisClient;
  /** The queue shards and each one's cell (queue, dispatcher, batch state): everything of an org is in one. */
  shards: QueueShards;
  cells: readonly Cell[];
  /** The cell holding everything of one org. */
  cellOf(orgId: string): Cell;
  /** Routes each call to the cell of the org it names. */
  producer: JobProducer;
  /** Routes each call to the cell of the org it names. */
  jobs: JobService;
  /**
   * The org's monthly budget as admission and the worker's quota guard judge it (quotas.ts: the month's cost_usd +
   * embedding_cost_usd), read now (not admission's short cache): for spends that are no job, e.g. a knowledge ingest.
   */
  budget(orgId: string): Promise<QuotaDecision>;
  /** This runtime's Prometheus metrics (its own registry; nothing goes on prom-client's global one). */
  metrics: OpsMetrics;
  /** Gemini Batch Mode (absent: batch-tier jobs run on the standard tier) and the batch tier's Redis state. */
  batches?: BatchApi;
  llm: {
    generate: import('../workers/call-agent.js').GenerateFn['generate'];
    embed(texts: string[], opts?: { signal?: AbortSignal; taskType?: string }): Promise<number[][]>;
  };
}

/**
 * A slice of the product (streaming, orchestration, operations...) that plugs into the API process, the
 * worker process, or both. `main.ts` and the test stack build the same list, so tests run what ships.
 */
export interface Feature extends WorkerHooks {
  name: string;
  /** Routes registered on the API (only in processes that serve HTTP). */
  routes?: (app: FastifyInstance) => void | Promise<void>;
  readiness?: Record<string, () => Promise<unknown>>;
  /** Starts the feature's own background workers or schedulers (only in worker processes). */
  startBackground?: () => Promise<void>;
  /**
   * Stops what `startBackground` started: no new work at once, the work in hand within `graceMs`, then given up
   * (its BullMQ workers close as the agent workers do). Run beside the agent workers' drain, in the same grace.
   */
  stopBackground?: (graceMs: number) => Promise<void>;
  /** After every worker and `stopBackground`: what the feature still holds (connections, queues, readers). */
  close?: () => Promise<void>;
}
