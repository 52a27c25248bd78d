import { retentionOf, type FeatureFactory } from '../runtime.js';
import type { Feature } from '../feature.js';
import { createAgentQueue } from '../../shared/queue/agent-queue.js';
import { createRedis } from '../../shared/infra/redis/connection.js';
import { createFlowService } from '../../producers/flow-service.js';
import { createFlowsWorker, type FlowsWorker } from '../../workers/flows/flows-worker.js';
import { createPipelineRegistry, type PipelineDefinition } from '../../shared/orchestration/pipeline.js';
import type { PipelineProgressEvent } from '../../workers/flows/pipeline-runner.js';
import { wizardCompletion } from '../../shared/orchestration/pipelines/wizard-completion.js';
import { defaultPresets, type FlowPreset } from '../../shared/orchestration/presets.js';
import { flowRoutes } from '../../producers/area-routes.js';

export const defaultPipelines: PipelineDefinition[] = [wizardCompletion];

export interface OrchestrationOptions {
  pipelines?: PipelineDefinition[];
  presets?: FlowPreset[];
  /** Concurrent flow/run jobs per worker process (default 50: they wait on Redis, not on a model). */
  concurrency?: number;
  /** Observes pipeline runs between checkpoints (metrics, tests); awaited. */
  onProgress?: (e: PipelineProgressEvent) => void | Promise<void>;
}

/**
 * Multi-agent orchestration on BullMQ flows: parallel fan-out (`/v1/flows/*`) and sequential pipelines
 * (`/v1/pipelines/*`). Routes serve in API processes; the flows worker runs in worker processes.
 */
export function createOrchestrationFeature(options: OrchestrationOptions = {}): FeatureFactory {
  return (deps): Feature => {
    const { cfg, logger } = deps;
    const log = logger.child({ feature: 'orchestration' });
    const pipelines = createPipelineRegistry(options.pipelines ?? defaultPipelines, deps.registry);
    const presets = options.presets ?? defaultPresets;
    const models = { fast: cfg.GEMINI_MODEL_FAST, pro: cfg.GEMINI_MODEL_PRO };
    const retention = retentionOf(cfg);
    const flows = createFlowService({
      redis: deps.redis,
      redisTarget: deps.infra.redisTarget,
      prefix: cfg.QUEUE_PREFIX,
      producer: deps.producer,
      agents: deps.registry,
      models,
      retention,
      pipelines,
      presets,
      logger,
    });
    let background: { worker: FlowsWorker; close(): Promise<void> } | undefined;

    return {
      name: 'orchestration',
      routes: (app) => flowRoutes(app, { flows, pipelines, presets, longPollMaxMs: cfg.LONG_POLL_MAX_MS, enqueueDeadlineMs: cfg.ENQUEUE_DEADLINE_MS }),
      readiness: {
        flows: async () => {
          if (background && !background.worker.isRunning()) throw new Error('flows worker not running');
        },
      },
      async startBackground() {
        const connection = createRedis(deps.infra.redisTarget, 'worker');
        const agentQueue = createAgentQueue({ connection, prefix: cfg.QUEUE_PREFIX, retention });
        const worker = createFlowsWorker({
          connection,
          prefix: cfg.QUEUE_PREFIX,
          concurrency: options.concurrency ?? cfg.FLOWS_CONCURRENCY,
          lockDurationMs: cfg.LOCK_DURATION_MS,
          stalledIntervalMs: cfg.STALLED_INTERVAL_MS,
          agentQueue,
          producer: deps.producer,
          pipelines,
          presets,
          logger: log,
          onProgress: options.onProgress,
        });
        await worker.ready();
        background = {
          worker,
          async close() {
            await worker.close();
            await agentQueue.close();
            connection.disconnect();
          },
        };
      },
      async close() {
        await background?.close();
        await flows.close();
      },
    };
  };
}

export const orchestrationFeature: FeatureFactory = createOrchestrationFeature();
