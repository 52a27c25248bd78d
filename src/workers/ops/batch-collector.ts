import type { InlinedRequest } from '@google/genai';
import type { BatchIntent, BatchStore } from '../../shared/batch/batch-store.js';
import type { Logger } from '../../shared/core/logger.js';
import type { BatchApi, BatchInfo } from '../../shared/infra/llm/batch-api.js';

const RUNNING = new Set(['JOB_STATE_PENDING', 'JOB_STATE_QUEUED', 'JOB_STATE_RUNNING']);

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
  logger: Logger;
}

/**
 * The batch tier's collector, one run per tick (under a lock: one run at a time across processes):
 * 1. intents recorded before a crash and never named are resolved: a batch with their displayName is adopted,
 *    else created (creating is not idempotent at Gemini: the intent is what makes it so);
 * 2. each model's pending requests are submitted as one batch when there are `maxRequests` or the oldest has
 *    waited `maxAgeMs`: the intent first, then `batches.create`, then its name;
 * 3. submitted batches are polled: a succeeded one hands each inline response to its job (by its metadata) and
 *    wakes it; a failed, expired or cancelled one, or one still running near a job's deadline (cancelled
 *    then), sends its unfinished jobs to the standard tier.
 */
export function createBatchCollector(o: BatchCollectorOptions) {
  const log = o.logger.child({ component: 'batch-collector' });

  async function create(intent: BatchIntent): Promise<void> {
    const reqs = await o.store.requests(intent.jobs);
    const src = reqs.filter((r): r is InlinedRequest => r !== undefined);
    const b = await o.batches.create(intent.model, intent.displayName, src);
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
    await create(intent);
  }

  async function submitDue(now: number): Promise<void> {
    for (const model of await o.store.models()) {
      const pending = await o.store.pending(model, o.maxRequests);
      if (!pending.length) continue;
      if (pending.length < o.maxRequests && now - pending[0].addedAt < o.maxAgeMs) continue;
      // A job that fell back on its own (its fallback time passed) is no longer pending: not submitted.
      const states = await Promise.all(pending.map((p) => o.store.job(p.id)));
      const jobs = pending.filter((_, i) => states[i]?.state === 'pending').map((p) => p.id);
      const intent = await o.store.openIntent(model, pending.map((p) => p.id), jobs, o.displayPrefix);
      if (jobs.length) await create(intent);
      else await o.store.closeIntent(intent.id, 'EMPTY');
    }
  }

  /** Jobs of the batch not yet answered go to the standard tier. */
  async function fallBack(intent: BatchIntent, why: string): Promise<void> {
    let n = 0;
    for (const id of intent.jobs) {
      const rec = await o.store.job(id);
      if (rec?.state !== 'submitted' || rec.intent !== intent.id) continue;
      await o.store.setJob(id, { state: 'fallback' });
      await o.wake(id);
      n += 1;
    }
    log.warn({ batch: intent.name, why, jobs: n }, 'batch did not answer in time: its jobs run on the standard tier');
  }

  async function deliver(intent: BatchIntent, b: BatchInfo): Promise<void> {
    const answered = new Set<string>();
    for (const r of b.responses ?? []) {
      if (!r.jobId || !intent.jobs.includes(r.jobId)) continue;
      const rec = await o.store.job(r.jobId);
      if (rec?.state !== 'submitted' || rec.intent !== intent.id) continue;
      answered.add(r.jobId);
      if (r.response) await o.store.setJob(r.jobId, { state: 'done', result: JSON.stringify(r.response) });
      else await o.store.setJob(r.jobId, { state: 'failed', error: JSON.stringify(r.error ?? {}) });
      await o.wake(r.jobId);
    }
    // A job the batch returned nothing for still gets an answer: on the standard tier.
    if (answered.size < intent.jobs.length) await fallBack({ ...intent, jobs: intent.jobs.filter((j) => !answered.has(j)) }, 'missing responses');
    log.info({ batch: b.name, answered: answered.size }, 'batch answers handed to their jobs');
  }

  async function poll(intent: BatchIntent, now: number): Promise<void> {
    const b = await o.batches.get(intent.name!);
    if (b.state !== intent.state) await o.store.setIntent(intent.id, { state: b.state });
    if (b.state === 'JOB_STATE_SUCCEEDED') {
      await deliver(intent, b);
      await o.store.closeIntent(intent.id, b.state);
    } else if (!RUNNING.has(b.state)) {
      await fallBack(intent, b.state);
      await o.store.closeIntent(intent.id, b.state);
    } else if (intent.minDeadline !== undefined && now >= intent.minDeadline - o.deadlineMarginMs) {
      await o.batches.cancel(intent.name!);
      await fallBack(intent, 'deadline near');
      await o.store.closeIntent(intent.id, 'JOB_STATE_CANCELLED');
    }
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
        return true;
      } finally {
        await unlock();
      }
    },
  };
}

export type BatchCollector = ReturnType<typeof createBatchCollector>;
