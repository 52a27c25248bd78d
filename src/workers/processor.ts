import { DelayedError, UnrecoverableError, type Job } from 'bullmq';
import type { AgentAction, AgentDefinition, ModelTier } from '../shared/agents/define-agent.js';
import { ValidationError } from '../shared/core/errors.js';
import { storedStage } from '../shared/core/job-stage.js';
import { lazyChild, type Logger } from '../shared/core/logger.js';
import { CANCELLED_REASON } from '../shared/core/cancel.js';
import { Cancellation } from './cancellation.js';
import type { AgentRun } from '../shared/infra/db/agent-runs.js';
import { usageBillOf, type RunBillTo, type UsageRider } from '../shared/infra/db/run-stream.js';
import type { AgentJobData, AgentResult } from '../shared/core/types.js';
import { billedOf, classify, DB_UNAVAILABLE_DELAY_MS, DB_UNAVAILABLE_MAX_DELAY_MS, ECANCELLED, encodeReason, RetryAfterError, type Outcome } from '../shared/core/outcomes.js';
import type { FairGate } from './fair-gate.js';
import { createDatabaseDeferrals } from './db-deferrals.js';
import { AttemptContext, Prepaid } from './attempt-context.js';
import { AttemptRows } from './attempt-rows.js';
import type { ClaimPrep, JobContext } from './middleware.js';
import { QUEUE } from '../shared/core/queue-names.js';
import { extractTrace, guardEvent, markError, SpanKind, startActiveSpan, type Span } from '../shared/telemetry/tracing.js';

export interface AgentResolver {
  resolve(agent: string, action: string): { agent: AgentDefinition; action: AgentAction };
  validateInput(agent: string, action: string, input: unknown): unknown;
}

export interface RunRecorder {
  /** `billTo`: a flow child's hash and its parent's, also charged the row (run-stream.ts `usageBillOf`). */
  record(row: AgentRun, billTo?: RunBillTo): Promise<unknown>;
  /**
   * The row as the recorder's stream entry (field, value) and its stream `key`: lets a script of the same hash
   * tag append it in a round trip the attempt makes anyway (the result cache's store, the fair claim).
   */
  entry?: { key: string; field: string; encode(row: AgentRun): string; rider?: UsageRider };
}

export interface ProcessorDeps {
  agents: AgentResolver;
  chain: (ctx: JobContext) => Promise<AgentResult>;
  runs: RunRecorder;
  models: Record<ModelTier, string>;
  logger: Logger;
  /** Called when a guard delays the job (rate limit, open breaker) — for metrics. */
  onDelay?: (ctx: JobContext, reason: string, delayMs: number) => void;
  /**
   * The run ended with an outcome for BullMQ to record (a result, a failure; not a park or a delay), once per run,
   * as it returns: whatever BullMQ then records of it. An attempt that lost its lock (the stalled check gave the job
   * to another fetch) did its work here all the same, and BullMQ refuses its outcome with neither a completed nor a
   * failed event. The dispatch buffer's rate (buffer-ask.ts) counts these.
   */
  onFinished?: (job: Job<AgentJobData, AgentResult>) => void;
  /**
   * The fair dispatcher's gate: runs only jobs that hold a slot, and parks delayed ones in their lane; told when each
   * run of the processor ends (`ended`).
   */
  gate?: Pick<FairGate, 'admit' | 'defer' | 'correct' | 'refundUnspent' | 'orgRequests' | 'ended'>;
  /**
   * What the gate's claim carries for the attempt's result cache guard (one script call for both): its first
   * lookup, or, for an L1 hit from memory, the answer itself, whose usage row the claim appends.
   */
  prepareClaim?: (ctx: JobContext) => ClaimPrep;
  /**
   * Whether the API asked to cancel the job (its marker): a cancel sent before this worker tracked the job.
   * Read only without a gate: the gate's claim script reads the marker itself.
   */
  /** Whether the API's cancel marker names this job (its id and timestamp, see job-service.ts). */
  cancelRequested?: (job: { id: string; timestamp: number }) => Promise<boolean>;
  /**
   * The wait of a job deferred for an unavailable database (DB_UNAVAILABLE_DELAY_MS, DB_UNAVAILABLE_MAX_DELAY_MS):
   * `firstMs` at its first deferral, doubled at each next one in a row, at most `maxMs` (db-deferrals.ts).
   */
  databaseDelay?: { firstMs: number; maxMs: number };
  /**
   * A batch-tier job failed for good (batch-tier.ts `settleFailed`): an answer its batch stored that no attempt
   * read is billed, and its request leaves the batch tier.
   */
  batchFailed?: (job: Job<AgentJobData, AgentResult>) => Promise<void>;
  /**
   * USD of `tokens` input tokens of the embedding model (its price in pricing.ts): the attempt's embedding calls
   * (`JobContext.embedded`) go on its row, estimated. Absent: they are counted at no price.
   */
  embeddingCost?: (tokens: number) => number;
  /** GEMINI_EMBEDDING_MODEL: named on a row with embedding calls (migration 028), which the ledger's model split reads. */
  embeddingModel?: string;
  /** A row with embedding calls was handed to the usage stream (for metrics): their estimated tokens and cost, USD. */
  onEmbeddingRecorded?: (spend: { tokens: number; costUsd: number }) => void;
}

/**
 * The error handed to BullMQ for a failed attempt. BullMQ stores only its message, so the code rides in it
 * (`encodeReason`) for any process to read back; `code` and `retryAfterMs` on the error serve this
 * process's listeners and the backoff strategy.
 */
function toBullmqError(outcome: Exclude<Outcome, { kind: 'delay' }>, message: string, cause: unknown): Error {
  const reason = encodeReason(outcome.code, message);
  if (outcome.kind === 'fail') return Object.assign(new UnrecoverableError(reason), { code: outcome.code });
  return new RetryAfterError(outcome.code, reason, outcome.retryAfterMs ?? 0, { cause });
}

/**
 * One attempt of one agent job: validate, run the guard chain, record the attempt in `agent_runs`, and
 * turn outcomes into BullMQ semantics (delay without using an attempt, retry, or fail for good).
 */
export function createAgentProcessor(deps: ProcessorDeps) {
  const attempt = attemptOf(deps);
  /**
   * One span per run of the processor (an attempt, or a start the fair gate parked again), a child of the
   * enqueue span whose context rides in the job data: any process, any retry, the same trace. `cancel` is the
   * attempt's cancellation, the agent worker's (without one, nothing can cancel the attempt while it runs).
   */
  return (job: Job<AgentJobData, AgentResult>, token?: string, cancel: Cancellation = new Cancellation()): Promise<AgentResult> => {
    const data = job.data;
    const startedAt = job.processedOn ?? Date.now();
    // The options inline, as an unnamed arrow: a named one (`const spanOptions = ...`) is given its name at run time
    // under tsx (esbuild's keepNames: a defineProperty per job, `npm start` and the bench run it so).
    return startActiveSpan(`process ${data.agent}:${data.action}`, () => ({
      kind: SpanKind.CONSUMER,
      attributes: {
        'messaging.system': 'bullmq',
        'messaging.operation.type': 'process',
        'messaging.destination.name': QUEUE.agent,
        'messaging.message.id': job.id,
        'agentq.job.id': job.id,
        'agentq.org_id': data.orgId,
        'agentq.agent': data.agent,
        'agentq.action': data.action,
        'agentq.attempt': job.attemptsMade + 1,
        // Since the job became runnable (its enqueue, or the end of the caller's delayMs), as the start latency
        // metrics count it: a job delayed 60 s did not wait 60 s for the queue. For a first attempt this is its
        // whole queue wait (fair share, rate limits, workers busy). The data's delay, never BullMQ's opts.delay
        // (a parked job's is the far-future park).
        'agentq.queue_wait_ms': Math.max(0, startedAt - data.enqueuedAt - (data.delayMs ?? 0)),
        ...(data.requestId ? { 'agentq.request_id': data.requestId } : {}),
      },
    }), extractTrace(data.trace), async (span) => {
      // Parked or delayed: back in Redis without an outcome (BullMQ records none), not a finished run.
      let delayed = false;
      try {
        const result = await attempt(job, token, cancel, span);
        span.setAttribute('agentq.outcome', 'completed');
        return result;
      } catch (err) {
        delayed = err instanceof DelayedError;
        if (delayed) span.setAttribute('agentq.outcome', 'delayed');
        else {
          // BullMQ's own test (Job.shouldRetryJob): a retryable failure of the last attempt (or of the one attempt a
          // DLQ retry gives) is dead-lettered, no retry follows it.
          const final = err instanceof UnrecoverableError || job.attemptsMade + 1 >= (job.opts.attempts ?? 1);
          if (span.isRecording()) {
            span.setAttribute('agentq.outcome', final ? 'failed' : 'retry');
            markError(span, err);
          }
          // Before BullMQ records the failure: a batch answer stored and never read is in the usage stream by then.
          if (final && data.tier === 'batch' && deps.batchFailed) {
            await deps.batchFailed(job).catch((e: unknown) => deps.logger.warn({ err: e, jobId: job.id }, 'batch tier: a failed job\'s unread answer could not be settled'));
          }
        }
        throw err;
      } finally {
        // Here, not on BullMQ's completed / failed events: an attempt whose lock lapsed (the stalled check gave the
        // job to another fetch) has its outcome refused, with neither event, and the gate would keep it as running.
        deps.gate?.ended(job);
        if (!delayed) deps.onFinished?.(job);
        span.end();
      }
    });
  };
}

function attemptOf(deps: ProcessorDeps) {
  const dbDeferrals = createDatabaseDeferrals({ ...(deps.databaseDelay ?? { firstMs: DB_UNAVAILABLE_DELAY_MS, maxMs: DB_UNAVAILABLE_MAX_DELAY_MS }), logger: deps.logger });
  /** Metrics see a row's embedding calls once the row is in the usage stream (never a row that failed to go in). */
  const embeddingRecorded = (row: AgentRun) => {
    if (row.embeddingTokens) deps.onEmbeddingRecorded?.({ tokens: row.embeddingTokens, costUsd: row.embeddingCostUsd ?? 0 });
  };
  /** Billed to `rows.billTo(row)`: a flow child's hash and its parent's, also charged the row. */
  const recordRow = async (row: AgentRun, rows: AttemptRows, logger: Logger) => {
    const billTo = rows.billTo(row);
    try {
      await deps.runs.record(row, billTo);
      embeddingRecorded(row);
    } catch (err) {
      // The result itself lives in Redis; a lost usage row must not turn a good answer into a retry.
      logger.error({ err }, 'could not record agent run');
    }
  };
  return async (job: Job<AgentJobData, AgentResult>, token: string | undefined, cancel: Cancellation, span: Span): Promise<AgentResult> => {
    const data = job.data;
    // The optional fields assigned, not spread in: each spread made an object and copied it through V8's slow path.
    const bindings: Record<string, unknown> = { jobId: job.id, orgId: data.orgId, agent: data.agent, action: data.action };
    if (data.requestId) bindings.requestId = data.requestId;
    if (data.userId) bindings.userId = data.userId;
    const logger = lazyChild(deps.logger, bindings);
    let resolved: { agent: AgentDefinition; action: AgentAction };
    let input: unknown;
    try {
      resolved = deps.agents.resolve(data.agent, data.action);
      input = deps.agents.validateInput(data.agent, data.action, data.input);
    } catch (err) {
      // Jobs are validated at enqueue; one that still fails here was written by hand and can never succeed.
      if (err instanceof ValidationError) throw toBullmqError({ kind: 'fail', code: err.code }, `invalid job: ${err.message}`, err);
      throw err;
    }
    const model = data.model ?? deps.models[resolved.action.model];
    const gate = deps.gate;
    const ctx = new AttemptContext(job, token, resolved.agent, resolved.action, input, model, logger, span, cancel);
    const rows = new AttemptRows(job, ctx, deps.embeddingCost, deps.embeddingModel);
    const attempt = rows.attempt;
    if (gate) {
      // Admitted by the fair dispatcher, which charged the first call to this model already (the job's
      // estimate, from its data as the producer computed it; nothing for a batch-tier job, whose lane no
      // online bucket limits), and keeps the org's TPM bucket.
      ctx.prepaid = new Prepaid(model, data);
      ctx.orgRequests = gate.orgRequests;
    }
    /** The attempt's usage row is in the usage stream already: appended by its claim or by its cache store. */
    let carried = false;
    const entry = deps.runs.entry;

    // The claim comes after validation, so a job that can never run fails at once instead of waiting for a
    // slot first. With the fair gate the claim script reads the cancel marker itself (one atomic round trip),
    // and it wins over the claim; without the gate the marker is read on its own. What the result cache
    // guard needs from Redis rides on the claim too: its lookup (a job that runs learns hit or miss, and holds
    // the single-flight lock on a miss, without a round trip of its own), or, when L1 already holds the answer,
    // the append of the attempt's usage row (the attempt then makes no Redis call beside its claim).
    const prep = gate ? deps.prepareClaim?.(ctx) : undefined;
    const cacheLookup = prep?.lookup;
    if (cacheLookup) ctx.cacheLookup = cacheLookup;
    const answer = prep?.answer;
    // No bill with it: an answer from memory made no model call and no embedding call (the chain did not run).
    // `appended` a method: an arrow under a property name is named at run time under tsx (see the span's options).
    const append = answer && entry ? { key: entry.key, field: entry.field, entry: entry.encode(rows.completed(answer.result)), appended() { carried = true; } } : undefined;
    // An attempt answered from memory calls no model: no stage is stored for it (its claim saves the check and
    // the write; for the moment it is active it reads as calling_model, the default of an active job).
    // The claim script stores the attempt's stage (job view, Bull Board) in the same call: no extra command.
    const stage = answer ? undefined : storedStage('calling_model', attempt, model);
    const admitted = gate ? await gate.admit(job, token, stage, cacheLookup, append) : 'run';
    guardEvent(span, 'agentq.guard.fair_gate', { 'agentq.fair.decision': gate ? admitted : 'ungated' });
    if (admitted === 'parked') {
      // Back in its lane for the dispatcher (it reached this worker without a slot): to the hooks a delay of a
      // length not known yet, as a guard's is (the stream says so and forgets the job here; metrics count it).
      deps.onDelay?.(ctx, 'no_slot', 0);
      throw new DelayedError();
    }
    // Fetched again after a stall while its first attempt still runs: that attempt's claim took the dispatch's
    // charge, so this one's first call is charged as any call no dispatch paid for (the rate-limit guard takes it).
    if (admitted === 'run_unpaid') ctx.prepaid = undefined;
    if (admitted === 'cancelled' || (!gate && (await deps.cancelRequested?.({ id: job.id!, timestamp: job.timestamp })))) {
      logger.info('job cancelled before it started');
      throw toBullmqError({ kind: 'fail', code: ECANCELLED }, CANCELLED_REASON, new Error(CANCELLED_REASON));
    }

    rows.started = performance.now();

    try {
      logger.debug({ attempt, model }, 'job started');
      let result: AgentResult;
      if (answer) {
        // Answered from memory: the chain would give this same answer at its first link (see ClaimPrep).
        // The call the dispatch paid for was never made: paid back.
        if (gate && ctx.prepaid) gate.refundUnspent(job);
        result = answer.serve();
      } else {
        // Read by the chain alone (its semantic cache and knowledge search; its rate limiter, which charges the
        // call's real usage through the gate): an attempt answered from memory makes neither closure.
        ctx.embedded = (texts) => rows.embedded(texts);
        if (gate) ctx.charge = (m, d) => gate.correct(data.orgId, m, d);
        // The row the result cache's store encodes: counted when the store says it appended it. Only the chain
        // reads this (its result cache guard), so an attempt answered from memory makes none of it.
        if (entry) {
          let entryRow: AgentRun | undefined;
          ctx.usage = {
            field: entry.field,
            entry: (r) => entry.encode((entryRow = rows.completed(r))),
            bill: () => {
              const to = entryRow && rows.billTo(entryRow);
              return to ? usageBillOf(entryRow!, to) : undefined;
            },
            carried: () => {
              carried = true;
              if (entryRow) embeddingRecorded(entryRow);
            },
            ...(entry.rider ? { rider: entry.rider } : {}),
          };
        }
        try {
          result = await deps.chain(ctx);
        } finally {
          // The call the dispatch paid for was never made (a cache hit, a refusal before the call): paid back.
          if (gate && ctx.prepaid) gate.refundUnspent(job);
        }
      }
      // Already in the usage stream when the claim (an answer from memory) or the result cache's store (a
      // computed miss) carried it; a run's calls after its batch answer are a row beside it (AttemptRows.splitBatch).
      // A carried row of a run that read no batch answer has nothing beside it: no row is built (an L1 hit's case).
      if (!carried || ctx.batchRead) {
        const [own, ...afterBatch] = rows.completedRows(result);
        if (!carried) await recordRow(own, rows, logger);
        for (const r of afterBatch) await recordRow(r, rows, logger);
      }
      // 'job completed' is logged by the worker once BullMQ has accepted the result (a worker that lost its
      // lock gets here too, but its completion is refused).
      logger.debug({ attempt, model: result.model }, 'attempt succeeded');
      return result;
    } catch (err) {
      const outcome = classify(err);
      if (outcome.kind === 'delay' && !cancel.cancelled) {
        // A database outage: the job waits longer at each of its deferrals in a row for it (db-deferrals.ts).
        const dbWait = outcome.reason === 'database_unavailable' ? dbDeferrals.next(job) : undefined;
        const waitMs = dbWait?.delayMs ?? outcome.delayMs;
        deps.onDelay?.(ctx, outcome.reason, waitMs);
        guardEvent(span, 'agentq.job.delayed', { 'agentq.delay.reason': outcome.reason, 'agentq.delay.ms': waitMs });
        const why = dbWait ? { deferral: dbWait.deferral, err: err instanceof Error ? err.message : String(err) } : {};
        logger.info({ reason: outcome.reason, delayMs: waitMs, ...why }, 'job delayed without using an attempt');
        // Before the job is parked: the calls this run paid for are in the usage stream by the time it waits. Its
        // embedding calls (a semantic cache lookup, a knowledge search) too, with no model call paid: the next run
        // starts its count over, so a run that made them and wrote nothing would leave them out of the ledger.
        const billed = billedOf(err);
        if (billed || rows.embeddingTokens > 0) await recordRow(rows.delayed(billed, outcome.reason), rows, logger);
        if (dbWait) await dbDeferrals.note(job, dbWait.deferral);
        const delayMs = Math.max(waitMs, 1);
        // A provider 429 names the model that refused (the fallback's, when routing switched; the embedding
        // model's, when the prompt's knowledge search was refused): only that model pauses, never the job's own
        // by default. An open breaker names the model it refused (a route's primary, say); one naming none is the
        // job's model's.
        const paused = outcome.model ?? (outcome.reason === 'breaker_open' ? ctx.model : undefined);
        if (gate) await gate.defer(job, token, delayMs, outcome.reason, paused);
        else await job.moveToDelayed(Date.now() + delayMs, token);
        throw new DelayedError();
      }
      const message = err instanceof Error ? err.message : String(err);
      // Cancelled whatever the abort made the chain throw (an aborted call, a refused guard...); a delay only
      // gets here when the job was cancelled, since the attempt's signal aborts on cancellation only.
      if (cancel.cancelled || outcome.kind === 'delay') {
        for (const r of rows.failedRows(err, CANCELLED_REASON)) await recordRow(r, rows, logger);
        logger.info('job cancelled while running');
        throw toBullmqError({ kind: 'fail', code: ECANCELLED }, CANCELLED_REASON, err);
      }
      for (const r of rows.failedRows(err, message.slice(0, 2000))) await recordRow(r, rows, logger);
      const retryable = outcome.kind === 'retry';
      logger.warn({ attempt, err: message, code: outcome.code, retryable }, 'job attempt failed');
      throw toBullmqError(outcome, message, err);
    } finally {
      // A lock the claim took for a value the chain never computed (it failed before its cache guard).
      if (cacheLookup) void cacheLookup.discard();
    }
  };
}
