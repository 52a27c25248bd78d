import { UnrecoverableError, Worker, type Job } from 'bullmq';
import { CANCELLED_REASON, flowCancelledKey } from '../../shared/core/cancel.js';
import { logConnectionErrors, type RedisClient } from '../../shared/infra/redis/connection.js';
import { QUEUE } from '../../shared/core/queue-names.js';
import { settleFanOut } from '../../shared/orchestration/fan-out.js';
import type { FlowJobData, FlowJobResult, ParallelFlowData, PipelineRunData } from '../../shared/orchestration/flow-data.js';
import { createPipelineRunner, type PipelineRunnerDeps } from './pipeline-runner.js';
import type { FlowPreset } from '../../shared/orchestration/presets.js';
import { IDLE_DRAIN_DELAY_S, workerOptions } from '../worker-options.js';
import { closeAfterGrace, createInFlight } from '../in-flight.js';

export interface FlowsWorkerOptions extends Omit<PipelineRunnerDeps, 'redis'> {
  /** A `worker`-role connection (maxRetriesPerRequest null): BullMQ blocks on it. */
  connection: RedisClient;
  presets: FlowPreset[];
  /** Flow and run jobs mostly wait on RedisClient, so this can be well above the agent worker's concurrency. */
  concurrency: number;
  lockDurationMs: number;
  stalledIntervalMs: number;
}

/**
 * The worker of the flows queue: it settles fan-out parents once their children are done and drives
 * pipeline runs step by step. Agent work itself always runs in the agent worker, as child jobs.
 */
export function createFlowsWorker(opts: FlowsWorkerOptions) {
  const presets = new Map(opts.presets.map((p) => [p.name, p]));
  const runPipeline = createPipelineRunner({ ...opts, redis: opts.connection });
  const childQueue = opts.agentQueue.qualifiedName;

  const inFlight = createInFlight();
  const worker = new Worker<FlowJobData, FlowJobResult>(
    QUEUE.flows,
    (job, token) =>
      inFlight.run(job, async () => {
        if (job.data.kind === 'pipeline') return runPipeline(job as Job<PipelineRunData>, token!);
        // Cancelled (`POST /v1/flows/:id/cancel`): its children were cancelled, and the flow ends so too.
        if (await opts.connection.exists(flowCancelledKey(opts.prefix, job.id!))) throw new UnrecoverableError(CANCELLED_REASON);
        return settleFanOut(job as Job<ParallelFlowData>, childQueue, presets, opts.connection);
      }),
    // A run that was active in a process that died is picked up again; its checkpoint makes that safe.
    { ...workerOptions(opts), drainDelay: IDLE_DRAIN_DELAY_S },
  );
  inFlight.attach(worker);
  logConnectionErrors(worker, opts.logger, 'flows worker', { msg: 'flows worker error', level: 'error' });
  worker.on('failed', (job, err) => {
    if (job && job.attemptsMade >= (job.opts.attempts ?? 1)) opts.logger.error({ flowId: job.id, kind: job.data.kind, reason: err.message }, 'flow failed');
  });

  return {
    worker,
    ready: () => worker.waitUntilReady(),
    isRunning: () => worker.isRunning(),
    /** As the agent worker closes: no new job, those in flight within `graceMs`, then a forced close (in-flight.ts). */
    close: (graceMs: number) => closeAfterGrace(worker, inFlight, graceMs, opts.logger),
  };
}

export type FlowsWorker = ReturnType<typeof createFlowsWorker>;
