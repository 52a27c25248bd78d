import type { InlinedRequest } from '@google/genai';
import type { BatchIntent, BatchJobRecord, BatchJobState, BatchStore } from '../../shared/batch/batch-store.js';
import type { Logger } from '../../shared/core/logger.js';
import type { BatchApi, BatchInfo, BatchResponse } from '../../shared/infra/llm/batch-api.js';
import type { AgentRun } from '../../shared/infra/db/agent-runs.js';
import { encodeRun } from '../../shared/infra/db/run-stream.js';
import { toLlmError } from '../../shared/infra/llm/llm-errors.js';

/**
 * Where a collector run may be stopped by a fault test: the intent recorded (before `create`), `create`
 * answered (before its name is recorded), the batch seen succeeded (before any answer is handed over), one
 * job's answer stored (before that job is woken).
 */
export type BatchPoint = 'intent-recorded' | 'created' | 'succeeded' | 'answer-stored';

const RUNNING = new Set(['JOB_STATE_PENDING', 'JOB_STATE_QUEUED', 'JOB_STATE_RUNNING']);

/** Gemini refused the request itself (a 4xx other than 429 and timeouts, as the LLM client classifies it): asking again cannot help. */
const refused = (err: unknown) => toLlmError(err).code === 'EBADREQUEST';

export interface BatchCollectorOptions {
  store: BatchStore;
  batches: Omit<BatchApi, 'resultOf'>;
  /** Puts a parked job back in line now (its answer is stored, or it must run on the standard tier). */
  wake: (jobId: string) => Promise<unknown>;
  maxRequests: number;
  maxAgeMs: number;
  deadlineMarginMs: number;
  /** Prefix of every batch's displayName (the queue prefix keeps deployments apart). */
  displayPrefix: string;
  /**
   * Writes a usage row (the workers' usage stream): an answer the batch returned, and Gemini bills, for a job that
   * no longer takes it (it fell back to the standard tier, or was cancelled) is recorded for that job.
   */
  record?: (row: AgentRun) => Promise<unknown>;
  /**
   * The job's BullMQ state and creation time (undefined: no such job): the sweep of stored answers bills one whose
   * job will never read it. Without it no sweep runs.
   */
  jobOf?: (jobId: string) => Promise<{ state: string; timestamp: number } | undefined>;
  /** Fault tests only: runs at each point before the collector goes on. */
  at?: (point: BatchPoint) => void | Promise<void>;
  logger: Logger;
}

/**
 * The batch tier's collector, one run per tick (under a lock: one run at a time across processes):
 * 1. intents recorded before a crash and never named are resolved: a batch with their displayName is adopted,
 *    else created (creating is not idempotent at Gemini: the intent is what makes it so);
 * 2. each model's pending requests are submitted as one batch when there are `maxRequests` or the oldest has
 *    waited `maxAgeMs`: the intent first, then `batches.create`, then its name;
 * 3. submitted batches are polled: a succeeded one hands each inline response to its job (by its metadata) and
 *    wakes it; a failed, expired or cancelled one sends its unfinished jobs to the standard tier; one still
 *    running near a job's deadline sends that job to the standard tier (and is cancelled once no job waits);
 * 4. answers stored and never read are swept: one whose job ended where no script of ours ran (BullMQ's stalled
 *    limit fails a job without its processor), or that was removed, or whose record nears its expiry, is dropped
 *    and billed (`sweepStored`).
 */
export function createBatchCollector(o: BatchCollectorOptions) {
  const log = o.logger.child({ component: 'batch-collector' });
  const at = async (point: BatchPoint) => o.at?.(point);

  /**
   * Moves a job of the intent to `to` and tells whether to wake it: when this run moved it, and also when it is
   * already there for this intent, i.e. a run that died between the move and the wake began the hand-over (`wake`
   * moves only a job still delayed).
   */
  async function handOver(id: string, intent: BatchIntent, to: BatchJobState, field?: { field: 'result' | 'error'; value: string; bill?: string }): Promise<boolean> {
    if (await o.store.move(id, 'submitted', to, { intent: intent.id, ...field })) return true;
    const rec = await o.store.job(id);
    return rec?.state === to && rec.intent === intent.id;
  }

  async function submit(intent: BatchIntent): Promise<void> {
    const reqs = await o.store.requests(intent.jobs);
    const src = reqs.filter((r): r is InlinedRequest => r !== undefined);
    let b: BatchInfo;
    try {
      b = await o.batches.create(intent.model, intent.displayName, src);
      await at('created');
    } catch (err) {
      // Gemini refused the batch itself (a 4xx other than 429): no retry can help; its jobs run standard now.
      if (refused(err)) {
        await fallBack(intent, intent.jobs, `batch refused (${(err as { status?: number }).status})`);
        await o.store.closeIntent(intent.id, 'REFUSED');
        return;
      }
      throw err;
    }
    await o.store.setIntent(intent.id, { name: b.name, state: b.state });
    log.info({ batch: b.name, model: intent.model, requests: src.length }, 'batch submitted');
  }

  /** An intent without a name: the crash came between recording it and recording create's answer. */
  async function resolve(intent: BatchIntent): Promise<void> {
    const found = await o.batches.findByDisplayName(intent.displayName, intent.createdAt);
    if (found) {
      await o.store.setIntent(intent.id, { name: found.name, state: found.state });
      log.info({ batch: found.name, displayName: intent.displayName }, 'batch adopted by displayName after a restart');
      return;
    }
    await submit(intent);
  }

  async function submitDue(now: number): Promise<void> {
    for (const model of await o.store.models()) {
      const pending = await o.store.pending(model, o.maxRequests);
      if (!pending.length) continue;
      if (pending.length < o.maxRequests && now - pending[0].addedAt < o.maxAgeMs) continue;
      // Only jobs still pending join (one that fell back on its own is not sent): recorded before create.
      const intent = await o.store.openIntent(model, pending.map((p) => p.id), o.displayPrefix);
      if (!intent) continue;
      await at('intent-recorded');
      await submit(intent);
    }
  }

  /** Jobs of the batch not yet answered go to the standard tier (each moved, and woken, once). */
  async function fallBack(intent: BatchIntent, jobs: string[], why: string): Promise<void> {
    let n = 0;
    for (const id of jobs) {
      if (!(await handOver(id, intent, 'fallback'))) continue;
      await o.wake(id);
      n += 1;
    }
    if (n) log.warn({ batch: intent.name, why, jobs: n }, 'batch did not answer: its jobs run on the standard tier');
  }

  /**
   * The usage row of an answer Gemini bills (at the batch price) that no attempt of its job takes: a part of the
   * attempt that recorded the request (state `delayed`: that run waited for the batch), its part id the batch's
   * intent, so any repeated write of it is the same row. None without usage, or for a record made before records
   * named their owner.
   */
  function billOf(r: BatchResponse, intent: BatchIntent, rec: BatchJobRecord, why: string): AgentRun | undefined {
    if (!rec.owner || !r.jobId || !r.response) return undefined;
    const billed = o.batches.billOf(intent.model, r.response);
    if (!billed) return undefined;
    const { owner } = rec;
    return {
      jobId: r.jobId,
      jobTs: rec.ts ?? 0,
      attempt: owner.attempt,
      part: `batch:${intent.id}`,
      orgId: owner.orgId,
      agent: owner.agent,
      action: owner.action,
      state: 'delayed',
      error: `waiting_for_batch: ${why}`,
      model: billed.model,
      inputTokens: billed.usage.input,
      outputTokens: billed.usage.output,
      cachedTokens: billed.usage.cached ?? 0,
      thoughtsTokens: billed.usage.thoughts ?? 0,
      costUsd: billed.costUsd,
      standardCostUsd: billed.standardCostUsd,
      tier: billed.tier,
      durationMs: 0,
      cacheHit: null,
      requestId: owner.requestId ?? null,
    };
  }

  /**
   * An answer its job no longer takes (it ran standard near its deadline or when its own time ran out, or it was
   * cancelled or failed for good while the batch held its request): Gemini bills it all the same, so it is the
   * job's usage (`billOf`). A record since replaced by another job under the same id (another intent) says
   * nothing of whose the answer was: left unbilled.
   */
  async function billDropped(r: BatchResponse, intent: BatchIntent): Promise<void> {
    if (!o.record || !r.jobId || !r.response) return;
    const rec = await o.store.job(r.jobId);
    if (!rec || rec.intent !== intent.id || (rec.state !== 'fallback' && rec.state !== 'cancelled')) return;
    const row = billOf(r, intent, rec, `answer not taken (job ${rec.state})`);
    if (row) await o.record(row);
  }

  /**
   * The row an answer stored for its job will be billed with if no attempt reads it (the job is cancelled or fails
   * for good first, or a DLQ retry with new input drops it): kept beside the answer, appended by the script that
   * drops it (batch-cancel-3.lua, dlq-retry-N.lua). An attempt that reads the answer bills it in its own row.
   */
  async function unreadBill(r: BatchResponse, intent: BatchIntent): Promise<string | undefined> {
    if (!r.jobId || !r.response) return undefined;
    const rec = await o.store.job(r.jobId);
    if (!rec || rec.intent !== intent.id) return undefined;
    const row = billOf(r, intent, rec, 'answer stored, never read');
    return row ? encodeRun(row) : undefined;
  }

  async function deliver(intent: BatchIntent, b: BatchInfo): Promise<void> {
    const answered = new Set<string>();
    for (const r of b.responses ?? []) {
      if (!r.jobId || !intent.jobs.includes(r.jobId) || answered.has(r.jobId)) continue;
      answered.add(r.jobId);
      const bill = r.response ? await unreadBill(r, intent) : undefined;
      const moved = r.response
        ? await handOver(r.jobId, intent, 'done', { field: 'result', value: JSON.stringify(r.response), ...(bill ? { bill } : {}) })
        : await handOver(r.jobId, intent, 'failed', { field: 'error', value: JSON.stringify(r.error ?? {}) });
      if (!moved) {
        await billDropped(r, intent);
        continue;
      }
      await at('answer-stored');
      await o.wake(r.jobId);
    }
    // A job the batch returned nothing for still gets an answer: on the standard tier.
    await fallBack(intent, intent.jobs.filter((j) => !answered.has(j)), 'no response for the job');
    log.info({ batch: b.name, answered: answered.size }, 'batch answers handed to their jobs');
  }

  async function poll(intent: BatchIntent, now: number): Promise<void> {
    let b: BatchInfo;
    try {
      b = await o.batches.get(intent.name!);
    } catch (err) {
      // The batch is gone (deleted by someone) or unreadable for good: its jobs run standard.
      if (!refused(err)) throw err;
      await fallBack(intent, intent.jobs, `batch unreadable (${(err as { status?: number }).status})`);
      await o.store.closeIntent(intent.id, 'GONE');
      return;
    }
    if (b.state !== intent.state) await o.store.setIntent(intent.id, { state: b.state });
    if (b.state === 'JOB_STATE_SUCCEEDED') {
      await at('succeeded');
      await deliver(intent, b);
      await o.store.closeIntent(intent.id, b.state);
    } else if (!RUNNING.has(b.state)) {
      await fallBack(intent, intent.jobs, b.state);
      await o.store.closeIntent(intent.id, b.state);
    } else if (intent.minDeadline !== undefined && now >= intent.minDeadline - o.deadlineMarginMs) {
      await nearDeadline(intent, now);
    }
  }

  /**
   * Only the jobs whose own deadline is near run standard now: a batch holds many orgs' jobs, and one job's
   * short deadline must not send the others to the standard price. The batch is cancelled once none of its jobs
   * still waits for it; else its next deadline is the earliest of the jobs left.
   */
  async function nearDeadline(intent: BatchIntent, now: number): Promise<void> {
    const recs = await Promise.all(intent.jobs.map(async (id) => ({ id, rec: await o.store.job(id) })));
    const waiting = recs.filter(({ rec }) => rec?.state === 'submitted' && rec.intent === intent.id);
    const near = (d: number | undefined) => d !== undefined && now >= d - o.deadlineMarginMs;
    await fallBack(intent, waiting.filter(({ rec }) => near(rec!.deadlineAt)).map(({ id }) => id), 'deadline near');
    const left = waiting.filter(({ rec }) => !near(rec!.deadlineAt));
    if (!left.length) {
      await o.batches.cancel(intent.name!);
      await fallBack(intent, intent.jobs, 'deadline near');
      await o.store.closeIntent(intent.id, 'JOB_STATE_CANCELLED');
      return;
    }
    const deadlines = left.map(({ rec }) => rec!.deadlineAt).filter((d): d is number => d !== undefined);
    await o.store.setMinDeadline(intent.id, deadlines.length ? Math.min(...deadlines) : undefined);
  }

  /** Stored answers the sweep reads per run: the oldest first, so a backlog is worked off over runs. */
  const SWEEP_MAX = 500;
  /**
   * An answer still unread this long before its record expires is billed and dropped even though its job lives
   * (parked past its own fallback time, a paused queue, workers down for days): once the record lapses its bill is
   * gone with it, and the job's next run asks anew anyway. An hour is many collector runs (BATCH_POLL_MS).
   */
  const LAPSE_MARGIN_MS = 3600_000;

  /**
   * An answer stored for a job that will never read it is billed (Gemini charged for it) and dropped, once
   * (`store.settle`): its job failed or completed without reading it where neither the cancel nor the processor's
   * failure path ran (e.g. BullMQ's stalled limit, which fails the job when a worker next fetches it, without its
   * processor), or was removed while the answer waited (a job re-created under its id first bills it as it replaces
   * the record: batch-add-4.lua). A job still waiting, delayed or running will read it, unless its record is about
   * to expire first (`LAPSE_MARGIN_MS`). Entries read or dropped since just leave.
   */
  async function sweepStored(): Promise<void> {
    if (!o.jobOf) return;
    let n = 0;
    let lapsing = 0;
    const now = Date.now();
    for (const { id, storedAt } of await o.store.storedAnswers(SWEEP_MAX)) {
      const rec = await o.store.job(id);
      if (!rec || rec.state !== 'done' || rec.readBy !== undefined) {
        await o.store.settle(id, rec?.ts);
        continue;
      }
      if (now >= storedAt + o.store.recordTtlMs - LAPSE_MARGIN_MS) {
        if (await o.store.settle(id, rec.ts)) lapsing += 1;
        continue;
      }
      const job = await o.jobOf(id);
      // Removed (Bull Board's clean or remove, retention, an obliterate), or another job now under its id.
      const gone = job === undefined || (rec.ts !== undefined && job.timestamp !== rec.ts);
      const ended = gone || job.state === 'failed' || job.state === 'completed';
      if (ended && (await o.store.settle(id, rec.ts))) n += 1;
    }
    if (n) log.info({ answers: n }, 'batch answers never read billed: their jobs ended or were removed without reading them');
    if (lapsing) log.warn({ answers: lapsing }, 'batch answers still unread as their records near expiry billed and dropped: their jobs never ran to read them');
  }

  return {
    /** One tick; false when another process's run holds the lock. */
    async run(lockMs = 60_000): Promise<boolean> {
      const unlock = await o.store.lock(lockMs);
      if (!unlock) return false;
      try {
        const now = Date.now();
        for (const intent of await o.store.openIntents()) {
          try {
            if (!intent.name) await resolve(intent);
            else await poll(intent, now);
          } catch (err) {
            log.warn({ err, intent: intent.id, batch: intent.name }, 'batch step failed; retried next tick');
          }
        }
        await submitDue(now);
        try {
          await sweepStored();
        } catch (err) {
          log.warn({ err }, 'sweep of unread batch answers failed; retried next tick');
        }
        return true;
      } finally {
        await unlock();
      }
    },
  };
}

export type BatchCollector = ReturnType<typeof createBatchCollector>;
