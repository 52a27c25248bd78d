import { UnrecoverableError, WaitingChildrenError, type Job } from 'bullmq';
import type { RedisClient } from '../../shared/infra/redis/connection.js';
import type { JobProducer } from '../../shared/queue/job-producer.js';
import { ValidationError } from '../../shared/core/errors.js';
import type { Logger } from '../../shared/core/logger.js';
import type { AgentQueue } from '../../shared/queue/agent-queue.js';
import { CANCELLED_REASON, cancelledKey, flowCancelledKey } from '../../shared/core/cancel.js';
import { jobHashKey } from '../../shared/core/queue-keys.js';
import { childOutcomes, childrenBilled, childSpend, sumEmbedding, sumUsd, type ChildBilled, type ChildOutcome } from '../../shared/orchestration/child-outcomes.js';
import { stepJobId, type PipelineRunData, type PipelineRunResult, type StepRecord } from '../../shared/orchestration/flow-data.js';
import type { PipelineRegistry, PipelineStep } from '../../shared/orchestration/pipeline.js';
import { extractTrace, withContext } from '../../shared/telemetry/tracing.js';

/** What a run reports as it goes; awaited, so an observer sees the run exactly between two persisted states. */
export interface PipelineProgressEvent {
  runId: string;
  stepId: string;
  event: 'child-added' | 'step-finished';
  state?: StepRecord['state'];
}

export interface PipelineRunnerDeps {
  pipelines: PipelineRegistry;
  /** The one enqueue path: a step is an agent job of the run's org, listed and fairly dispatched like any other. */
  producer: Pick<JobProducer, 'prepare' | 'add' | 'relane' | 'giveBack'>;
  /** The agent queue on a blocking-safe connection, to read step jobs' states. */
  agentQueue: AgentQueue;
  redis: RedisClient;
  prefix: string;
  logger: Logger;
  onProgress?: (e: PipelineProgressEvent) => void | Promise<void>;
}

/** A step whose job was removed before it finished (a fan-out's child reads the same, fan-out.ts). */
const REMOVED = 'step job was removed before it finished (cancelled)';

const messageOf = (err: unknown) => {
  if (err instanceof ValidationError && err.details.length) return `${err.message}: ${err.details.map((d) => `${d.path}: ${d.message}`).join('; ')}`;
  return err instanceof Error ? err.message : String(err);
};

/**
 * The data after `step` ended with `outcome`: output or error recorded, cursor moved on (or to the end). `billed`:
 * what the step's job was billed that its result does not say (`childrenBilled`): beyond its result, a failed step's
 * whole cost, a completed one's earlier attempts; and its embedding calls.
 */
function afterStep(data: PipelineRunData, step: PipelineStep, outcome: ChildOutcome, billed?: ChildBilled): PipelineRunData {
  const next: PipelineRunData = structuredClone(data);
  const rec = next.steps[next.cursor];
  rec.finishedAt = Date.now();
  Object.assign(rec, childSpend(outcome, billed));
  const failed = outcome.state === 'failed' || outcome.result.success === false;
  if (outcome.state === 'completed') Object.assign(rec, { durationMs: outcome.result.durationMs, model: outcome.result.model });
  if (!failed && outcome.state === 'completed') {
    rec.state = 'completed';
    next.outputs[step.outputKey] = outcome.result.data;
    next.cursor += 1;
    return next;
  }
  const error = outcome.state === 'failed' ? outcome.error : (outcome.result.error ?? 'step returned an unsuccessful result');
  rec.state = 'failed';
  rec.error = error;
  next.errors[step.id] = error;
  if (step.continueOnError) {
    next.cursor += 1;
    return next;
  }
  for (const later of next.steps.slice(next.cursor + 1)) later.state = 'skipped';
  next.cursor = next.steps.length;
  return next;
}

/**
 * Runs one pipeline as a "step job" in the flows queue: each step is a real agent job, added as a child of
 * the run with the deterministic id `<runId>-<stepId>`; the run then waits in `waiting-children` and is
 * processed again when that child settles. Progress is written to the run's data before the child is
 * created (state `running`, job id, mapped input) and after it settles (output or error), so a run picked
 * up again after a crash at any point neither re-runs a finished step nor creates a second job for one.
 */
export function createPipelineRunner(deps: PipelineRunnerDeps) {
  const childQueue = deps.agentQueue.qualifiedName;

  /** A job removed by `DELETE /v1/jobs/:id` before it ran leaves only a tombstone; it must not be re-created. */
  async function cancelledOutcome(jobId: string): Promise<ChildOutcome | undefined> {
    return (await deps.redis.exists(cancelledKey(deps.prefix, jobId))) ? { state: 'failed', error: CANCELLED_REASON } : undefined;
  }

  /**
   * Adds the step job, or hands an existing one to the dispatcher again (idempotent by job id), so a run
   * recovered after a crash between the add and the dispatcher's lane never strands its step. An existing job
   * is never added again: BullMQ's add of it would put it back in the run's dependencies, also when it failed
   * since the run read it (its failure already recorded, nothing would take it out: the run would wait forever).
   */
  async function addStep(job: Job<PipelineRunData>, rec: StepRecord, existed: boolean): Promise<void> {
    const meta = { orgId: job.data.orgId, ...(job.data.requestId ? { requestId: job.data.requestId } : {}) };
    const p = deps.producer.prepare({ agent: rec.agent, action: rec.action, input: rec.input }, meta);
    const step = [{ ...p, opts: { ...p.opts, jobId: rec.jobId! } }];
    if (existed) return deps.producer.relane(step, meta);
    // Under the trace of the request that started the run: each step's enqueue (and so its job) joins it.
    await withContext(extractTrace(job.data.trace), () => deps.producer.add(step, meta, {
      parent: { id: job.id!, queue: job.queueQualifiedName },
      // The run was admitted as a whole when it started.
      admitted: true,
      // The run decides what a failed step means (stop or continue), so a failure must not strand it.
      ignoreDependencyOnFailure: true,
    }));
  }

  /**
   * The step's outcome, or throws WaitingChildrenError after parking the run until the step job settles.
   * `markAdded` persists `added` once the step's job is known to exist.
   */
  async function settle(job: Job<PipelineRunData>, token: string, rec: StepRecord, markAdded: () => Promise<void>): Promise<ChildOutcome> {
    const jobId = rec.jobId!;
    let added = rec.added === true;
    for (let round = 0; round < 3; round++) {
      // Existence first, outcome second: a job that did not exist and has no outcome was never created,
      // whereas the reverse order could miss a job that finished and was removed in between.
      const existed = (await deps.agentQueue.getJobState(jobId)) !== 'unknown';
      const outcome = (await childOutcomes(job, childQueue)).get(jobId) ?? (await cancelledOutcome(jobId));
      if (outcome) return outcome;
      // Made, then gone unfinished: removed (Bull Board's or a script's remove, or the API's cancel before it wrote
      // its tombstone; BullMQ's removal itself hands the run back). Made again, it would run and bill a step its
      // remover took away.
      if (!existed && added) return { state: 'failed', error: REMOVED };
      await addStep(job, rec, existed);
      if (!added) {
        await markAdded();
        added = true;
      }
      if (!existed) await deps.onProgress?.({ runId: job.id!, stepId: rec.id, event: 'child-added' });
      if (await job.moveToWaitingChildren(token, { child: { id: jobId, queue: childQueue } })) throw new WaitingChildrenError();
      // Not parked: the step job settled in the meantime, so the next round reads its outcome.
    }
    throw new Error(`step job ${jobId} is neither pending nor settled`);
  }

  return async function runPipeline(job: Job<PipelineRunData>, token: string): Promise<PipelineRunResult> {
    const def = deps.pipelines.get(job.data.pipeline);
    if (!def) throw new UnrecoverableError(`unknown pipeline "${job.data.pipeline}"`);
    let data: PipelineRunData = structuredClone(job.data);
    const save = async (next: PipelineRunData) => {
      await job.updateData(next);
      data = next;
    };
    const logger = deps.logger.child({ runId: job.id, pipeline: def.name, orgId: data.orgId });

    // `POST /v1/pipelines/runs/:id/cancel`: read before each step is made and at the end, so no step is made after it.
    const cancelled = async () => (await deps.redis.exists(flowCancelledKey(deps.prefix, job.id!))) === 1;

    while (data.cursor < def.steps.length) {
      const step = def.steps[data.cursor];
      if (data.steps[data.cursor]?.id !== step.id) throw new UnrecoverableError(`pipeline "${def.name}" changed while run ${job.id} was in progress`);
      if (data.steps[data.cursor].state === 'pending') {
        if (await cancelled()) {
          const next = structuredClone(data);
          for (const later of next.steps.slice(next.cursor)) later.state = 'skipped';
          next.cursor = next.steps.length;
          await save(next);
          break;
        }
        let input: unknown;
        try {
          input = step.inputMapper(structuredClone(data.outputs), structuredClone(data.input));
          // Validated here so a bad mapping is this step's error, not a job that fails in the agent worker.
          deps.producer.prepare({ agent: step.agent, action: step.action, input }, { orgId: data.orgId });
        } catch (err) {
          const error = `input mapping failed: ${messageOf(err)}`;
          logger.warn({ step: step.id, error }, 'pipeline step could not start');
          await save(afterStep(data, step, { state: 'failed', error }));
          await deps.onProgress?.({ runId: job.id!, stepId: step.id, event: 'step-finished', state: 'failed' });
          continue;
        }
        const next = structuredClone(data);
        Object.assign(next.steps[next.cursor], { state: 'running', jobId: stepJobId(job.id!, step.id), input, startedAt: Date.now() });
        await save(next);
      }
      const markAdded = () => {
        const next = structuredClone(data);
        next.steps[next.cursor].added = true;
        return save(next);
      };
      const outcome = await settle(job, token, data.steps[data.cursor], markAdded);
      const stepJob = data.steps[data.cursor].jobId!;
      const billed = (await childrenBilled(deps.redis, jobHashKey(job.queueQualifiedName, job.id!), childQueue, [stepJob])).get(stepJob);
      await save(afterStep(data, step, outcome, billed));
      const rec = data.steps.find((s) => s.id === step.id)!;
      logger.info({ step: step.id, state: rec.state, error: rec.error }, 'pipeline step finished');
      await deps.onProgress?.({ runId: job.id!, stepId: step.id, event: 'step-finished', state: rec.state });
    }

    // The start reserved every step against the org's daily job limit; those never made (skipped after a stop, or
    // whose input mapping failed) are no jobs of the day. Flagged first: a run picked up again after the flag and
    // before the refund gives nothing back twice (a crash in between leaves the day's count high, never low).
    const unmade = data.steps.filter((s) => !s.jobId).length;
    if (data.reserved && !data.refunded && unmade > 0) {
      await save({ ...structuredClone(data), refunded: true });
      await deps.producer.giveBack(data.orgId, data.reserved, unmade);
    }

    // Cancelled: whatever its steps did, the run ends as a cancelled job does (shown "cancelled").
    if (await cancelled()) throw new UnrecoverableError(CANCELLED_REASON);

    // A step that failed without `continueOnError` stopped the run: the run failed, and says so in its state
    // (a "completed" run with `success: false` reads as success to every poller). Steps, outputs and errors
    // stay in the run's data, which the run view shows either way.
    const stopper = def.steps.find((st) => !st.continueOnError && data.steps.find((r) => r.id === st.id)?.state === 'failed');
    if (stopper) throw new UnrecoverableError(`step "${stopper.id}" failed: ${data.errors[stopper.id] ?? 'unknown error'}`);

    return {
      success: Object.keys(data.errors).length === 0,
      outputs: data.outputs,
      errors: data.errors,
      totalDurationMs: Date.now() - job.timestamp,
      totalCostUsd: data.steps.reduce((sum, s) => sumUsd(sum, s.costUsd ?? 0), 0),
      embedding: sumEmbedding(data.steps.map((s) => s.embedding)),
    };
  };
}
