import { randomUUID } from 'node:crypto';
import { Job, Queue, QueueEvents, type JobsOptions } from 'bullmq';
import type { RedisClient, RedisTarget } from '../shared/infra/redis/connection.js';
import type { EnqueueMeta, JobProducer } from '../shared/queue/job-producer.js';
import { injectTrace } from '../shared/telemetry/tracing.js';
import { createJobWaiters } from '../shared/queue/job-waiters.js';
import { childIncarnations } from '../shared/queue/child-incarnations.js';
import { finishedSinceRead, type JobService } from './job-service.js';
import type { ModelTier } from '../shared/agents/define-agent.js';
import { ConflictError, NotFoundError, ValidationError } from '../shared/core/errors.js';
import { cancelRequestedKey, flowCancelledKey, shownState } from '../shared/core/cancel.js';
import { jobHashKey } from '../shared/core/queue-keys.js';
import type { RetentionOptions } from '../shared/queue/agent-queue.js';
import { QUEUE } from '../shared/core/queue-names.js';
import { createRedis, logConnectionErrors, whileReachable } from '../shared/infra/redis/connection.js';
import { childOutcomes, childrenBilled, childSpend, sumEmbedding, sumUsd } from '../shared/orchestration/child-outcomes.js';
import { fanOutSpend, resultKeys, spendReadAgain } from '../shared/orchestration/fan-out.js';
import { stepJobId, type FlowChildRef, type FlowJobData, type FlowJobResult, type ParallelFlowData, type ParallelFlowResult, type PipelineRunData } from '../shared/orchestration/flow-data.js';
import type { PipelineRegistry } from '../shared/orchestration/pipeline.js';
import type { FlowPreset } from '../shared/orchestration/presets.js';
import type { Logger } from '../shared/core/logger.js';
import type { FlowCancelView, FlowView, PipelineRunView } from '../shared/orchestration/flow-views.js';

/** Flow parents and pipeline runs retry on their own (a Redis hiccup), kept and bounded like agent jobs. */
export function flowJobOptions(r: RetentionOptions): JobsOptions {
  return {
    attempts: r.attempts,
    backoff: { type: 'exponential', delay: 1000 },
    removeOnComplete: { count: r.keepCompletedCount, age: r.keepCompletedAgeS },
    removeOnFail: { count: r.keepFailedCount, age: r.keepFailedAgeS },
  };
}

export type { FlowCancelView, FlowView, PipelineRunView } from '../shared/orchestration/flow-views.js';

/** Ids of new flows and runs, made by the route before the start so a start past its deadline can name them. */
export const newFlowId = () => `flow-${randomUUID()}`;
export const newRunId = () => `run-${randomUUID()}`;

export interface FlowServiceDeps {
  logger?: Logger;
  /** The API's fail-fast connection. */
  redis: RedisClient;
  /** For the one blocking QueueEvents connection that long polls share, created on first use. */
  redisTarget: RedisTarget;
  prefix: string;
  /** The one enqueue path: flow children are agent jobs of the org like any other. */
  producer: Pick<JobProducer, 'prepare' | 'enqueueFlow' | 'admit' | 'refundFailedAdd'>;
  agents: { resolve(agent: string, action: string): { action: { model: ModelTier } } };
  models: Record<ModelTier, string>;
  retention: RetentionOptions;
  pipelines: PipelineRegistry;
  presets: FlowPreset[];
  /**
   * The org's job service (the same shard's): a flow's cancel cancels each child as `DELETE /v1/jobs/:id` does, and a
   * child it cancelled reads "cancelled" as its own GET says.
   */
  jobs: Pick<JobService, 'cancel' | 'tombstoned'>;
  /** How long a flow's cancel marker (and its not-yet-made steps' markers) is kept, as a job's. */
  cancelledTtlS: number;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const FINISHED = new Set(['completed', 'failed']);
/** How long a cancel that found nothing left to cancel waits for the flows worker settling the flow (a few reads). */
const SETTLE_WAIT_MS = 5_000;

/** Starts fan-out flows and pipeline runs, and reads them back for one org at a time. */
export function createFlowService(deps: FlowServiceDeps) {
  const flows = new Queue<FlowJobData, FlowJobResult>(QUEUE.flows, { connection: deps.redis, prefix: deps.prefix });
  // Read-only here (child states); jobs are added through the producer.
  const agentJobs = new Queue(QUEUE.agent, { connection: deps.redis, prefix: deps.prefix });
  logConnectionErrors(flows, deps.logger, 'flows queue');
  logConnectionErrors(agentJobs, deps.logger, 'agent queue (flows)');
  const presets = new Map(deps.presets.map((p) => [p.name, p]));
  let events: { queueEvents: QueueEvents; connection: RedisClient } | undefined;
  const queueEvents = () => {
    if (!events) {
      const connection = createRedis(deps.redisTarget, 'worker');
      events = { connection, queueEvents: new QueueEvents(QUEUE.flows, { connection, prefix: deps.prefix }) };
      logConnectionErrors(events.queueEvents, deps.logger, 'flows queue events');
    }
    return events.queueEvents;
  };

  /** All-or-nothing: every task is validated (and every error reported) before anything is added. */
  function prepareTasks(tasks: unknown[], defaults: Record<string, unknown> | undefined, meta: EnqueueMeta) {
    const details: ValidationError['details'] = [];
    const prepared = tasks.map((raw, i) => {
      const task = defaults && isObject(raw) ? { ...raw, options: { ...defaults, ...(isObject(raw.options) ? raw.options : {}) } } : raw;
      try {
        const p = deps.producer.prepare(task, meta, `tasks.${i}.`);
        // An idempotent job id may already belong to another parent, which would make the whole flow fail to add.
        if (p.idempotent) details.push({ path: `tasks.${i}.options.idempotencyKey`, message: 'not supported inside a flow' });
        return p;
      } catch (err) {
        if (!(err instanceof ValidationError)) throw err;
        details.push(...err.details);
        return undefined;
      }
    });
    if (details.length) throw new ValidationError('invalid flow request', details);
    return prepared.map((p) => p!);
  }

  async function startFanOut(tasks: unknown[], defaults: Record<string, unknown> | undefined, meta: EnqueueMeta, id: string, preset?: string) {
    const prepared = prepareTasks(tasks, defaults, meta);
    const keys = resultKeys(prepared.map((p) => p.name));
    const children: FlowChildRef[] = prepared.map((p, i) => ({
      id: p.opts.jobId!,
      key: keys[i],
      agent: p.data.agent,
      action: p.data.action,
      model: p.lane.model,
    }));
    const data: ParallelFlowData = { kind: 'parallel', orgId: meta.orgId, ...(meta.requestId ? { requestId: meta.requestId } : {}), ...(preset ? { preset } : {}), children };
    await deps.producer.enqueueFlow(
      { name: preset ?? 'parallel', queueName: QUEUE.flows, data, opts: { ...flowJobOptions(deps.retention), jobId: id } },
      prepared,
      meta,
    );
    return { id };
  }

  async function load(orgId: string, id: string, kind: 'flow' | 'run'): Promise<Job<FlowJobData, FlowJobResult>> {
    const job = await Job.fromId<FlowJobData, FlowJobResult>(flows, id);
    const matches = job?.data?.orgId === orgId && (kind === 'run') === (job.data.kind === 'pipeline');
    if (!job || !matches) throw new NotFoundError(kind === 'run' ? `pipeline run "${id}" not found` : `flow "${id}" not found`);
    return job;
  }

  /** Long poll like `GET /v1/jobs/:id?waitMs=`: returns when the job finishes or the wait is over. */
  // One set of QueueEvents listeners for every long poll on flows and runs, not a few per waiter.
  const waiters = createJobWaiters(queueEvents);

  async function loadSettled(orgId: string, id: string, kind: 'flow' | 'run', waitMs: number) {
    const read = async () => {
      let job = await load(orgId, id, kind);
      const state = await job.getState();
      if (finishedSinceRead(job, state)) job = await load(orgId, id, kind);
      return { job, state };
    };
    const first = await read();
    if (waitMs <= 0 || FINISHED.has(first.state)) return first;
    // A finish or the timeout ends the wait; the state read below says which.
    await waiters.wait(id, waitMs, async () => FINISHED.has(await flows.getJobState(id)));
    return read();
  }

  /**
   * Cancels what of a flow or run has not finished. The marker first: the flows worker reads it before it settles
   * the flow or makes the run's next step, so whatever it does after this call ends the flow cancelled. Then each
   * child or step job still its child (the job read under the id after the marker: its parent and creation time) as
   * `DELETE /v1/jobs/:id` cancels it (removed with its slot and dispatch charge given back, or aborted by its
   * worker); a run's steps not made yet get the job cancel marker for any incarnation ('1', read by
   * the claim): a step the runner makes after all, having read the flow's marker just before it was set, never
   * calls the model. Idempotent: a child already finished or cancelled is skipped.
   */
  async function cancel(orgId: string, id: string, kind: 'flow' | 'run'): Promise<FlowCancelView> {
    const job = await load(orgId, id, kind);
    const state = await job.getState();
    if (FINISHED.has(state)) return { id, state: shownState(state, job.failedReason), cancelled: [], cancelling: [] };
    const marks = deps.redis.multi().set(flowCancelledKey(deps.prefix, id), '1', 'EX', deps.cancelledTtlS);
    let ids: string[];
    if (job.data.kind === 'pipeline') {
      const steps = job.data.steps.filter((s) => s.state === 'pending' || s.state === 'running');
      ids = steps.flatMap((s) => (s.jobId ? [s.jobId] : []));
      for (const s of steps) if (!s.added) marks.set(cancelRequestedKey(deps.prefix, stepJobId(id, s.id)), '1', 'EX', deps.cancelledTtlS);
    } else {
      ids = job.data.children.map((c) => c.id);
    }
    await marks.exec();
    // Each child as the job under its id now that is still this flow's child, by its creation time: one removed
    // since and a new job made under its id (a step's id is its run's and step's; an idempotency key sent again) is
    // no job of this flow, left alone also when the replacement comes after this read (the job service's cancel
    // takes the time read). Cancelled by id (until 2026-12-07), that job was removed or aborted as the flow's. Whether
    // a worker runs each is read in the same round trip (it took one per child, BullMQ's getJobState, until 2026-12-07).
    const read = await childIncarnations(deps.redis, { jobKeyPrefix: agentJobs.toKey(''), activeKey: agentJobs.toKey('active'), parent: { id, queueQualifiedName: flows.qualifiedName } }, ids);
    const children = new Map(read.map((c) => [c.id, c.ts]));
    const cancelled: string[] = [];
    const cancelling: string[] = [];
    const cancelEach = (childIds: string[]) =>
      Promise.all(
        childIds.map(async (childId) => {
          try {
            const view = await deps.jobs.cancel(orgId, childId, { ts: children.get(childId)! });
            (view.state === 'cancelling' ? cancelling : cancelled).push(childId);
          } catch (err) {
            // Finished, already cancelled, or gone: nothing left of it to cancel.
            if (!(err instanceof ConflictError || err instanceof NotFoundError)) throw err;
          }
        }),
      );
    // The jobs not running first, then the running ones: an aborted child frees its worker's slot, and that worker
    // would otherwise fetch a sibling still in the wait list (charged, about to be removed) and start it.
    const ours = ids.filter((c) => children.has(c));
    const active = new Set(read.filter((c) => c.active).map((c) => c.id));
    await cancelEach(ours.filter((c) => !active.has(c)));
    await cancelEach(ours.filter((c) => active.has(c)));
    const answer = { id, state: 'cancelling', cancelled: ids.filter((c) => cancelled.includes(c)), cancelling: ids.filter((c) => cancelling.includes(c)) };
    if (cancelled.length > 0 || cancelling.length > 0) return answer;
    // Nothing of it was left to cancel: the flows worker may have read no marker and be settling it (a fan-out runs
    // only once its children finished; a run whose steps all ended is finishing), or it finished since the read
    // above. Until 2026-12-07 this answered `cancelling` and the flow then ended `completed`. A finished flow answers
    // its state; a settling one is waited for (it takes the worker a few reads) and answers the state it ended in,
    // `cancelled` too (the worker read the marker after all). One still settling after the wait, or not yet taken
    // by the worker (which reads the marker, set above, first), stays `cancelling`.
    const now = await loadSettled(orgId, id, kind, 0);
    const { job: settled, state: ended } = now.state === 'active' && settling(now.job) ? await loadSettled(orgId, id, kind, SETTLE_WAIT_MS) : now;
    return FINISHED.has(ended) ? { ...answer, state: shownState(ended, settled.failedReason) } : answer;
  }

  /** Whether the flows worker, running the flow, only settles it: every child or step has ended. */
  const settling = (job: Job<FlowJobData, FlowJobResult>) =>
    job.data.kind !== 'pipeline' || !job.data.steps.some((s) => s.state === 'pending' || s.state === 'running');

  /**
   * What the flow's or run's children were billed, read now (one round trip): a child's row can be summed after the
   * parent recorded the child's cost (a stalled child's run whose completion BullMQ refused may end after the re-run
   * that completed it, the flow settled or the run moved on), so a view reads the sums again rather than that record.
   */
  const billedOf = (job: Job<FlowJobData, FlowJobResult>, ids: string[]) => childrenBilled(deps.redis, jobHashKey(flows.qualifiedName, job.id!), agentJobs.qualifiedName, ids);

  const common = (job: Job<FlowJobData, FlowJobResult>) => ({
    ...(job.returnvalue ? { result: job.returnvalue } : {}),
    ...(job.failedReason ? { error: job.failedReason } : {}),
    createdAt: new Date(job.timestamp).toISOString(),
    ...(job.finishedOn ? { finishedAt: new Date(job.finishedOn).toISOString() } : {}),
  });

  return {
    /**
     * The request shapes (body, preset input, pipeline input) are validated by the routes' schemas; each
     * task is then validated against its agent here, all of them before anything is added.
     */
    async startParallel(body: { tasks: unknown[]; options?: Record<string, unknown> }, meta: EnqueueMeta, id = newFlowId()) {
      return startFanOut(body.tasks, body.options, meta, id);
    },

    presetNames: () => [...presets.keys()],

    async startPreset(name: string, input: unknown, meta: EnqueueMeta, id = newFlowId()) {
      const preset = presets.get(name);
      if (!preset) throw new NotFoundError(`unknown flow preset "${name}"`);
      return startFanOut(preset.tasks(input), undefined, meta, id, preset.name);
    },

    async startPipeline(name: string, input: unknown, meta: EnqueueMeta, id = newRunId()) {
      const def = deps.pipelines.get(name);
      if (!def) throw new NotFoundError(`unknown pipeline "${name}"; valid: ${deps.pipelines.list().map((p) => p.name).join(', ')}`);
      const trace = injectTrace();
      // Admitted here as one request for all its steps, whose jobs then enter without (pipeline-runner.ts); the run
      // gives back the steps it never makes (a stop, a failed input mapping) when it ends.
      const reserved = await deps.producer.admit(meta.orgId, def.steps.length);
      const data: PipelineRunData = {
        kind: 'pipeline',
        orgId: meta.orgId,
        ...(meta.requestId ? { requestId: meta.requestId } : {}),
        ...(trace ? { trace } : {}),
        pipeline: def.name,
        input,
        cursor: 0,
        steps: def.steps.map((s) => ({ id: s.id, agent: s.agent, action: s.action, outputKey: s.outputKey, state: 'pending' })),
        outputs: {},
        errors: {},
        ...(reserved ? { reserved } : {}),
      };
      try {
        await flows.add(`pipeline:${def.name}`, data, { ...flowJobOptions(deps.retention), jobId: id });
      } catch (err) {
        // A run not stored gives its steps' reservation back (Redis refused it; an unknown outcome keeps it).
        const unstored = async () => ((await flows.getJobState(id)) === 'unknown' ? def.steps.length : 0);
        await deps.producer.refundFailedAdd(meta.orgId, reserved, err, { sent: true, unstored });
        throw err;
      }
      return { id };
    },

    async getFlow(orgId: string, id: string, waitMs = 0): Promise<FlowView> {
      const { job, state } = await loadSettled(orgId, id, 'flow', waitMs);
      const data = job.data as ParallelFlowData;
      // A settled flow's costs are read again from its children's sums (`billedOf`), not only as it settled.
      const [outcomes, billed] = await Promise.all([childOutcomes(job, agentJobs.qualifiedName), job.returnvalue ? billedOf(job, data.children.map((c) => c.id)) : undefined]);
      // Cancelled as `GET /v1/jobs/:id` says it: failed as cancelled while it ran, or removed with a tombstone.
      const childState = async (childId: string) => {
        const outcome = outcomes.get(childId);
        if (outcome) return shownState(outcome.state, outcome.state === 'failed' ? outcome.error : undefined);
        const now = await agentJobs.getJobState(childId);
        return now === 'unknown' && (await deps.jobs.tombstoned(orgId, childId)) ? 'cancelled' : now;
      };
      const children = await Promise.all(data.children.map(async (c) => ({ id: c.id, key: c.key, state: await childState(c.id) })));
      const result = billed ? { result: spendReadAgain(job.returnvalue as ParallelFlowResult, fanOutSpend(data.children, outcomes, billed)) } : {};
      return { id: job.id!, kind: data.preset ?? 'parallel', state: shownState(state, job.failedReason), children, ...common(job), ...result };
    },

    async getRun(orgId: string, id: string, waitMs = 0): Promise<PipelineRunView> {
      const { job, state } = await loadSettled(orgId, id, 'run', waitMs);
      const data = job.data as PipelineRunData;
      // A finished step's cost and embedding calls are read again from its job's sums (`billedOf`), not only as the
      // step ended; the run's totals with them once it settled.
      const ended = data.steps.flatMap((s) => (s.jobId && (s.state === 'completed' || s.state === 'failed') ? [s.jobId] : []));
      const [outcomes, billed] = ended.length ? await Promise.all([childOutcomes(job, agentJobs.qualifiedName), billedOf(job, ended)]) : [new Map(), new Map()];
      const spent = data.steps.map((s) => {
        const outcome = s.jobId ? outcomes.get(s.jobId) : undefined;
        if (!outcome) return { costUsd: s.costUsd, embedding: s.embedding };
        const now = childSpend(outcome, billed.get(s.jobId!));
        // Never below the record (see `spendReadAgain`); the run's total is the steps' sum, as the flow's.
        const costUsd = s.costUsd === undefined || now.costUsd === undefined ? (now.costUsd ?? s.costUsd) : Math.max(now.costUsd, s.costUsd);
        return { ...now, ...(costUsd !== undefined ? { costUsd } : {}) };
      });
      const steps = await Promise.all(
        data.steps.map(async (s, i) => ({
          id: s.id,
          agent: s.agent,
          action: s.action,
          state: s.state,
          ...(s.jobId ? { jobId: s.jobId } : {}),
          ...(s.state === 'running' && s.jobId ? { jobState: await agentJobs.getJobState(s.jobId) } : {}),
          ...(Object.hasOwn(data.outputs, s.outputKey) ? { output: data.outputs[s.outputKey] } : {}),
          ...(s.error ? { error: s.error } : {}),
          ...(spent[i].costUsd !== undefined ? { costUsd: spent[i].costUsd } : {}),
          ...(spent[i].embedding ? { embedding: spent[i].embedding } : {}),
          ...(s.durationMs !== undefined ? { durationMs: s.durationMs } : {}),
        })),
      );
      const result = job.returnvalue
        ? { result: { ...job.returnvalue, totalCostUsd: spent.reduce((sum, s) => sumUsd(sum, s.costUsd ?? 0), 0), embedding: sumEmbedding(spent.map((s) => s.embedding)) } }
        : {};
      return { id: job.id!, pipeline: data.pipeline, state: shownState(state, job.failedReason), steps, outputs: data.outputs, errors: data.errors, ...common(job), ...result };
    },

    cancelFlow: (orgId: string, id: string) => cancel(orgId, id, 'flow'),
    cancelRun: (orgId: string, id: string) => cancel(orgId, id, 'run'),

    /** Answers every long poll in flight now with the flow's or run's current view (the process is closing). */
    endWaits: () => waiters.endAll(),

    async close() {
      await flows.close();
      await agentJobs.close();
      // As the cell's (app/cell.ts): BullMQ's close would wait for a Redis that is down.
      if (events) await whileReachable(events.connection, events.queueEvents.close());
      events?.connection.disconnect();
    },
  };
}

export type FlowService = ReturnType<typeof createFlowService>;
