import type { BatchStore } from '../shared/batch/batch-store.js';
import { billedOf, DelayJobError } from '../shared/core/outcomes.js';
import { inlinedRequestOf, type BatchApi } from '../shared/infra/llm/batch-api.js';
import { batchRequestError } from '../shared/infra/llm/llm-errors.js';
import { billedCall, type GenerateResult } from '../shared/infra/llm/llm-client.js';
import type { JobContext } from './middleware.js';

/** Gemini expires a batch after 48 h: a job without a deadline waits this long at most, then runs standard. */
const NO_DEADLINE_WAIT_MS = 49 * 3600_000;

/**
 * The attempt's side of the batch tier. A job whose batch has not answered records its request as pending for
 * its model (once) and waits, parked without using an attempt or a worker slot, until the collector hands it
 * its answer and wakes it, or until its own fallback time (safety net when no collector runs). The answer
 * then goes through the rest of the attempt as any model call's would (validation, ledger at the batch price,
 * usage row, cache store). A job told to fall back, or past its fallback time, calls the standard tier.
 */
export function createBatchTier(deps: { store: BatchStore; batches: Pick<BatchApi, 'resultOf'>; deadlineMarginMs: number }) {
  /** When the job stops waiting for a batch: the collector cancels at deadline - margin, this is half the margin later. */
  const fallbackAt = (deadlineAt: number | undefined, addedAt: number) =>
    deadlineAt !== undefined ? deadlineAt - deps.deadlineMarginMs / 2 : addedAt + NO_DEADLINE_WAIT_MS;

  async function generate<R>(
    ctx: JobContext,
    req: { system?: string; prompt: string; responseJsonSchema?: unknown },
    standard: () => Promise<R>,
  ): Promise<R | GenerateResult> {
    // A route's retry or fallback within the attempt that was served the batch's answer: that answer again would
    // be the same failure (billed again, under the record's model even for the fallback), so the standard tier.
    if (ctx.batchRead) return standard();
    const jobId = ctx.job.id!;
    // Its creation time tells this job from an earlier one under the same id (an idempotency key sent again).
    const jobTs = ctx.job.timestamp;
    const found = await deps.store.job(jobId, jobTs);
    // A cancelled record is no request of a running job: recorded again (replaced) if this job waits.
    const rec = found?.state === 'cancelled' ? undefined : found;
    if (rec?.state === 'done' || rec?.state === 'failed') {
      // Served to one attempt: a re-run of that attempt (its worker died before BullMQ recorded the outcome:
      // same attemptsMade) gets the answer Gemini billed again; a retry (its answer failed validation, say)
      // calls the standard tier. Marked used before the outcome, a crash cost a second, standard call.
      const attempt = ctx.job.attemptsMade;
      if (rec.readBy !== undefined && rec.readBy !== attempt) {
        if (await deps.store.move(jobId, rec.state, 'fallback')) return standard();
        return generate(ctx, req, standard);
      }
      if (rec.readBy === undefined && !(await deps.store.move(jobId, rec.state, rec.state, { field: 'readBy', value: String(attempt) }))) return generate(ctx, req, standard);
      ctx.batchRead = true;
      if (rec.state === 'done') {
        // Its bill, apart from any call the run makes after it (attempt-rows.ts): billed once, whichever run reads it.
        try {
          const res = deps.batches.resultOf(rec.model, JSON.parse(rec.result!), req.responseJsonSchema !== undefined);
          ctx.batchBilled = billedCall(res);
          return res;
        } catch (err) {
          ctx.batchBilled = billedOf(err);
          throw err;
        }
      }
      throw batchRequestError(rec.model, JSON.parse(rec.error ?? '{}') as { code?: number; message?: string });
    }
    if (rec?.state === 'fallback') return standard();
    const now = Date.now();
    const until = fallbackAt(ctx.job.data.deadlineAt, rec?.addedAt ?? now);
    if (now >= until) {
      // Out of time (no collector answered): standard, unless the answer lands in this very moment.
      if (!rec || (await deps.store.move(jobId, rec.state, 'fallback'))) return standard();
      return generate(ctx, req, standard);
    }
    if (!rec) {
      const owner = { orgId: ctx.orgId, agent: ctx.agentName, action: ctx.actionName, attempt: ctx.job.attemptsMade + 1, ...(ctx.job.data.requestId ? { requestId: ctx.job.data.requestId } : {}) };
      await deps.store.add(jobId, jobTs, ctx.model, inlinedRequestOf(req, jobId), ctx.job.data.deadlineAt, now, owner);
    }
    throw new DelayJobError(Math.max(1, until - now), 'waiting_for_batch');
  }

  /**
   * The job failed for good: it takes no answer any more. Its request leaves the batch tier as a cancelled job's
   * does, and an answer already stored that no attempt read is billed (batch-cancel-3.lua): Gemini charged for
   * it. A DLQ retry then records its request anew.
   */
  async function settleFailed(job: { id?: string; timestamp: number }): Promise<void> {
    if (job.id) await deps.store.cancel(job.id, job.timestamp);
  }

  return { generate, settleFailed };
}

export type BatchTier = ReturnType<typeof createBatchTier>;
