import type { FeatureFactory } from '../runtime.js';
import type { Feature } from '../feature.js';
import { createAgentQueue, retentionOf } from '../../shared/queue/agent-queue.js';
import { createRedis, logConnectionErrors } from '../../shared/infra/redis/connection.js';
import { createFlowService, type FlowService } from '../../producers/flow-service.js';
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
    // A flow and its children, and a run and its steps, live in the org's queue shard (app/cell.ts).
    const services = deps.cells.map((cell) =>
      createFlowService({
        redis: deps.redis,
        redisTarget: deps.infra.redisTarget,
        prefix: cell.prefix,
        producer: cell.producer,
        agents: deps.registry,
        models,
        retention,
        pipelines,
        presets,
        logger,
        jobs: cell.jobs,
        cancelledTtlS: cfg.KEEP_FAILED_AGE_S,
      }),
    );
    const flows = routeFlowService(services, (orgId) => services[deps.cellOf(orgId).index]);
    let background: Array<{ worker: FlowsWorker; close(graceMs: number): Promise<void> }> = [];

    return {
      name: 'orchestration',
      routes: (app) => flowRoutes(app, { flows, pipelines, presets, longPollMaxMs: cfg.LONG_POLL_MAX_MS, enqueueDeadlineMs: cfg.ENQUEUE_DEADLINE_MS }),
      readiness: {
        flows: async () => {
          if (background.some((b) => !b.worker.isRunning())) throw new Error('flows worker not running');
        },
      },
      async startBackground() {
        background = await Promise.all(deps.cells.map((cell) => startFlowsWorker(cell.prefix)));
      },
      async stopBackground(graceMs) {
        await Promise.all(background.map((b) => b.close(graceMs)));
      },
      async close() {
        await flows.close();
      },
    };

    /** The flows worker of one queue shard: its flows and runs, adding steps to the same shard's queue. */
    async function startFlowsWorker(prefix: string) {
      const connection = createRedis(deps.infra.redisTarget, 'worker');
      const agentQueue = createAgentQueue({ connection, prefix, retention });
      // It re-emits every error of the worker's connection: without a listener BullMQ printed each to stderr.
      logConnectionErrors(agentQueue, log, 'agent queue (flows worker)');
      const worker = createFlowsWorker({
        connection,
        prefix,
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
      return {
        worker,
        async close(graceMs: number) {
          await worker.close(graceMs);
          await agentQueue.close();
          connection.disconnect();
        },
      };
    }
  };
}

/** Flows and runs of the caller's org's queue shard; one shard: its service itself. */
function routeFlowService(services: FlowService[], of: (orgId: string) => FlowService): FlowService {
  if (services.length === 1) return services[0];
  return {
    startParallel: (body, meta, id) => of(meta.orgId).startParallel(body, meta, id),
    presetNames: () => services[0].presetNames(),
    startPreset: (name, input, meta, id) => of(meta.orgId).startPreset(name, input, meta, id),
    startPipeline: (name, input, meta, id) => of(meta.orgId).startPipeline(name, input, meta, id),
    getFlow: (orgId, id, waitMs) => of(orgId).getFlow(orgId, id, waitMs),
    getRun: (orgId, id, waitMs) => of(orgId).getRun(orgId, id, waitMs),
    cancelFlow: (orgId, id) => of(orgId).cancelFlow(orgId, id),
    cancelRun: (orgId, id) => of(orgId).cancelRun(orgId, id),
    endWaits: () => services.forEach((f) => f.endWaits()),
    close: async () => void (await Promise.all(services.map((f) => f.close()))),
  };
}

export const orchestrationFeature: FeatureFactory = createOrchestrationFeature();
