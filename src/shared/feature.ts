import type { Worker } from 'bullmq';
import type { FastifyInstance } from 'fastify';
import type { Redis } from 'ioredis';
import type { JobProducer } from '../producers/job-producer.js';
import type { JobService } from '../producers/job-service.js';
import type { AdmissionCheck } from '../producers/routes/jobs.js';
import type { OpsMetrics } from '../ops/metrics.js';
import type { JobContext } from '../workers/middleware.js';
import type { AgentRegistry } from './agents/registry.js';
import type { Config } from './config.js';
import type { Infra } from './infra.js';
import type { Logger } from './logger.js';
import type { AgentQueue } from './queue/agent-queue.js';
import type { AgentJobData, AgentResult } from './types.js';

/** What a feature is built from. Connections here are shared: a feature that blocks (XREAD, SUBSCRIBE) makes its own. */
export interface FeatureDeps {
  cfg: Config;
  infra: Infra;
  logger: Logger;
  registry: AgentRegistry;
  /** Fail-fast connection for request paths. */
  redis: Redis;
  queue: AgentQueue;
  producer: JobProducer;
  jobs: JobService;
  /** Per-org admission (rate plan + quotas) for routes that start work; 429 via `admitOrThrow`. */
  admission: AdmissionCheck;
  /** This runtime's Prometheus metrics (its own registry; nothing goes on prom-client's global one). */
  metrics: OpsMetrics;
  llm: {
    generate: import('../workers/call-agent.js').GenerateFn['generate'];
    embed(texts: string[], opts?: { signal?: AbortSignal; taskType?: string }): Promise<number[][]>;
  };
}

/**
 * A slice of the product (streaming, orchestration, operations...) that plugs into the API process, the
 * worker process, or both. `main.ts` and the test stack build the same list, so tests run what ships.
 */
export interface Feature {
  name: string;
  /** Routes registered on the API (only in processes that serve HTTP). */
  routes?: (app: FastifyInstance) => void | Promise<void>;
  readiness?: Record<string, () => Promise<unknown>>;
  /** Receives the model's text chunks of a job as they arrive (only for jobs with `stream: true`). */
  onText?: (ctx: JobContext) => ((text: string) => Promise<void>) | undefined;
  /** Called when a guard delays a job without using an attempt. */
  onDelay?: (ctx: JobContext, reason: string, delayMs: number) => void;
  /** Sees the agent worker once it exists (to listen to completed/failed events). */
  attachWorker?: (worker: Worker<AgentJobData, AgentResult>) => void;
  /** Starts the feature's own background workers or schedulers (only in worker processes). */
  startBackground?: () => Promise<void>;
  close?: () => Promise<void>;
}
