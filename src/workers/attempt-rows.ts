import { randomUUID } from 'node:crypto';
import type { Job } from 'bullmq';
import { afterBatchPart, stalledRunPart, type AgentRun } from '../shared/infra/db/agent-runs.js';
import type { RunBillTo } from '../shared/infra/db/run-stream.js';
import { jobHashKey } from '../shared/core/queue-keys.js';
import { estimateTextTokens } from '../shared/queue/estimate-tokens.js';
import { billedOf } from '../shared/core/outcomes.js';
import type { AgentJobData, AgentResult, BilledCall } from '../shared/core/types.js';
import { roundUsd } from '../shared/orchestration/child-outcomes.js';
import type { JobContext } from './middleware.js';

/** A row's model, token and cost columns from what a call was billed. */
function billedColumns(b: BilledCall) {
  return {
    model: b.model,
    inputTokens: b.usage.input,
    outputTokens: b.usage.output,
    costUsd: b.costUsd,
    standardCostUsd: b.standardCostUsd,
    tier: b.tier,
    cachedTokens: b.usage.cached ?? 0,
    thoughtsTokens: b.usage.thoughts ?? 0,
  };
}

/** What a row with no such columns spreads into itself: one object for every row, not an empty one each. */
const NO_COLUMNS = Object.freeze({});

/** A row's model columns that no call was billed. */
const NOTHING_BILLED = { inputTokens: 0, outputTokens: 0, costUsd: 0, standardCostUsd: 0, cachedTokens: 0, thoughtsTokens: 0 };

/**
 * The `agent_runs` rows of one attempt (processor.ts): its own row when it ends, a delayed run's billed calls.
 * A class, not closures made per attempt: its methods are made once, where each attempt made seven functions.
 */
export class AttemptRows {
  readonly attempt: number;
  /** This run's embedding calls: Gemini reports no usage for them, so estimated here (`JobContext.embedded`). */
  embeddingTokens = 0;
  /** When the attempt's work started (after its claim); 0 before (the row an answer from memory's claim carries). */
  started = 0;
  /**
   * This run's own row beside another run's of the same attempt: a run the stalled check handed out again (the
   * first one's lock lapsed, maybe mid-call) pays for its own calls, and its row under the first run's key was
   * refused as a duplicate until 2026-12-07. A run served its batch's stored answer keeps the attempt's row: the
   * answer was billed once, and every run of the attempt is served it again (batch-tier.ts, readBy).
   */
  private readonly stalledPart: string;
  /** The part of the row of a run's calls after its batch answer (`afterBatchPart`): one per run, as `stalledPart`. */
  private readonly afterBatch: string;

  constructor(
    private readonly job: Job<AgentJobData, AgentResult>,
    /** The attempt's context: its model, tier and batch read as they are when a row is made (routing may switch the model). */
    private readonly ctx: Pick<JobContext, 'model' | 'tier' | 'batchRead' | 'batchBilled'>,
    /** USD of `tokens` embedding input tokens (ProcessorDeps.embeddingCost). */
    private readonly embeddingCost?: (tokens: number) => number,
    /** The model the embedding calls are made with (ProcessorDeps.embeddingModel), named on the row (migration 028). */
    private readonly embeddingModel?: string,
  ) {
    this.attempt = job.attemptsMade + 1;
    this.stalledPart = stalledRunPart(job.stalledCounter);
    this.afterBatch = afterBatchPart(job.stalledCounter);
  }

  /** Counts the estimated tokens of an embedding call's texts. */
  embedded(texts: readonly string[]): void {
    for (const t of texts) this.embeddingTokens += estimateTextTokens(t);
  }

  /**
   * The row's embedding columns: estimated, and said so (migration 023), with the model they were made with
   * (migration 028: the ledger splits by it, not by whichever model is configured when it reads them).
   */
  private embeddingColumns() {
    const embeddingTokens = this.embeddingTokens;
    if (embeddingTokens <= 0) return NO_COLUMNS;
    // embeddingModel undefined (no model given) is left out of the row's JSON and stored NULL: the configured one.
    return { embeddingTokens, embeddingCostUsd: this.embeddingCost?.(embeddingTokens) ?? 0, embeddingEstimated: true, embeddingModel: this.embeddingModel };
  }

  row(row: Partial<AgentRun> & Pick<AgentRun, 'state'>): AgentRun {
    const { job, ctx } = this;
    const data = job.data;
    return {
      jobId: job.id!,
      jobTs: job.timestamp,
      attempt: this.attempt,
      orgId: data.orgId,
      agent: data.agent,
      action: data.action,
      model: ctx.model,
      inputTokens: 0,
      outputTokens: 0,
      costUsd: 0,
      tier: ctx.tier ?? 'standard',
      durationMs: this.started ? Math.round(performance.now() - this.started) : 0,
      cacheHit: null,
      error: null,
      requestId: data.requestId ?? null,
      ...this.embeddingColumns(),
      ...(this.stalledPart && !ctx.batchRead ? { part: this.stalledPart } : NO_COLUMNS),
      ...row,
    };
  }

  /** The rows of a completed attempt: its own (`completed`), then its calls after a batch answer (`splitBatch`). */
  completedRows(result: AgentResult): AgentRun[] {
    return this.splitBatch(this.completedRow(result));
  }

  /** The attempt's own row of a completed attempt: of a run served its batch answer, that answer's bill only. */
  completed(result: AgentResult): AgentRun {
    return this.splitBatch(this.completedRow(result))[0];
  }

  private completedRow(result: AgentResult): AgentRun {
    const usage = result.tokensUsed;
    // billedColumns' columns written out, in its order: no BilledCall and no columns object made to be spread here.
    return this.row({
      state: 'completed',
      model: result.model,
      inputTokens: usage.input,
      outputTokens: usage.output,
      costUsd: result.costUsd,
      // A cache hit calls no model: it costs nothing and saves nothing against the standard tier, and its row
      // carries the tier this job asked for, not the one of the job whose answer it reuses.
      standardCostUsd: result.cacheHit ? result.costUsd : (result.standardCostUsd ?? result.costUsd),
      tier: result.cacheHit ? (this.ctx.tier ?? 'standard') : (result.tier ?? 'standard'),
      cachedTokens: usage.cached ?? 0,
      thoughtsTokens: usage.thoughts ?? 0,
      cacheHit: result.cacheHit ?? null,
    });
  }

  /**
   * A failed attempt whose model answered (bad output, a refusal) is billed what Gemini charged for it: its own row,
   * then its calls after a batch answer (`splitBatch`).
   */
  failedRows(err: unknown, error: string): AgentRun[] {
    const billed = billedOf(err);
    return this.splitBatch(this.row({ state: 'failed', error, ...(billed ? billedColumns(billed) : {}) }));
  }

  /** The attempt's own row of a failed attempt (`failedRows`' first). */
  failed(err: unknown, error: string): AgentRun {
    return this.failedRows(err, error)[0];
  }

  /**
   * A run served its batch's stored answer bills that answer in the attempt's own row, part '' whichever run reads
   * it (Gemini billed it once; each run of the attempt is served it again), at the batch tier. The calls the run made
   * after it (a route's retry or fallback, on the standard tier: batch-tier.ts) were summed into the attempt's
   * figures by the route guard; they are this run's own and go in a row of their own, part `standard:<n>`, at their
   * tier and price. Until 2026-12-07 they were folded into the '' row under the last call's tier, and a stalled
   * re-run's were lost with its duplicate '' row. That row describes no attempt of its own (no duration, no cache
   * decision: `usage()` leaves it out of those). The run's embedding calls (its semantic-cache lookup, its knowledge
   * search: each run makes its own, at the standard price) go in that row too, made for them alone when the run
   * called no model after the answer (its model columns 0, tier standard). Until 2026-12-07 they rode on the '' row,
   * so a stalled re-run's were lost with its duplicate, from the ledger and from a flow child's parent.
   */
  private splitBatch(row: AgentRun): AgentRun[] {
    if (!this.ctx.batchRead) return [row];
    const b = this.ctx.batchBilled;
    const { embeddingTokens, embeddingCostUsd, embeddingEstimated, embeddingModel, ...answer } = row;
    const own: AgentRun = { ...answer, ...NOTHING_BILLED, tier: 'batch', ...(b ? billedColumns(b) : {}) };
    const after = {
      inputTokens: row.inputTokens - own.inputTokens,
      outputTokens: row.outputTokens - own.outputTokens,
      costUsd: roundUsd(row.costUsd - own.costUsd),
      standardCostUsd: roundUsd((row.standardCostUsd ?? row.costUsd) - (own.standardCostUsd ?? own.costUsd)),
      cachedTokens: (row.cachedTokens ?? 0) - (own.cachedTokens ?? 0),
      thoughtsTokens: (row.thoughtsTokens ?? 0) - (own.thoughtsTokens ?? 0),
    };
    const called = after.inputTokens > 0 || after.outputTokens > 0 || after.costUsd > 0;
    if (!called && !embeddingTokens) return [own];
    const embedding = embeddingTokens ? { embeddingTokens, embeddingCostUsd, embeddingEstimated, embeddingModel } : {};
    return [own, { ...answer, ...after, ...(called ? {} : { tier: 'standard' as const }), ...embedding, part: this.afterBatch, durationMs: 0, cacheHit: null }];
  }

  /**
   * A run delayed after calls it paid for (a route's try that answered unusably, then a 429 or an open breaker; or
   * only embedding calls, `billed` absent: the row's model columns are then zero and its embedding columns say what
   * it spent): the attempt runs again under the same number, and its own row will carry only that run's calls.
   * These get a row of their own, told from the attempt's by its part id (migration 022), made here once: the
   * sink's redelivery of the entry is the same row, and each delayed run of the attempt is a row of its own.
   */
  delayed(billed: BilledCall | undefined, reason: string): AgentRun {
    return this.row({ state: 'delayed', part: randomUUID(), error: reason, ...(billed ? billedColumns(billed) : {}) });
  }

  /**
   * A flow child's (or pipeline step's) row is also summed on its hash and its parent's, in the same call: a billed
   * row its result will not carry (a failed attempt, a delayed run's calls), since a failed child has no result to
   * carry it (fan-out.ts, pipeline-runner.ts), also once retention removed the child's hash; a completed row, since
   * this run's completion may yet be refused (its lock lapsed and the stalled check ran the attempt again: the
   * parent gets the other run's result) though its calls were paid; and any row's embedding calls, which no result
   * carries. A job without a parent has no reader for it. A stored batch answer is billed once, in the row of
   * whichever run reads it (the same row, part ''): summed as any completed row, once, by its marker
   * (`billedRowField`), whichever runs append it. Until 2026-12-07 it was left to the result, which is one run's:
   * a stalled re-run's child was short of the ledger by the other run's call after the answer (or the answer).
   */
  billTo(row: AgentRun): RunBillTo | undefined {
    const job = this.job;
    return job.parentKey && (row.costUsd > 0 || (row.embeddingTokens ?? 0) > 0)
      ? { key: jobHashKey(job.queueQualifiedName, job.id!), jobId: job.id!, parentKey: job.parentKey }
      : undefined;
  }
}
