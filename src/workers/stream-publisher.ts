import type { Job, Worker } from 'bullmq';
import type { JobContext } from './middleware.js';
import { CANCELLED_REASON } from '../shared/core/cancel.js';
import type { AgentJobData, AgentResult } from '../shared/core/types.js';
import { agentJobKey, jobStreamKey } from '../shared/core/queue-keys.js';
import type { ProgressEvent, StreamEvent } from '../shared/core/stream-event.js';
import { storedStage, type StoredStage } from '../shared/core/job-stage.js';
import { defineLua } from '../shared/infra/lua.js';
import { JobStreamWriter, type StreamWriterOptions } from '../shared/stream/stream-writer.js';

type AgentJob = Job<AgentJobData, AgentResult>;

interface Entry {
  writer: JobStreamWriter;
  /** Model calls made by the current attempt: a second one (fallback route) restarts the text. */
  calls: number;
}

/** Same rule as the agent worker's dead-letter check: the failure is final when no attempt is left. */
function isFinalFailure(job: AgentJob, err: Error): boolean {
  return err.name === 'UnrecoverableError' || job.attemptsMade >= (job.opts.attempts ?? 1);
}

/**
 * The worker side of streaming: writes the events of jobs enqueued with `stream: true` to their Redis
 * Stream. Jobs without it cost no Redis command here.
 */
export function createStreamPublisher(o: StreamWriterOptions) {
  const entries = new Map<string, Entry>();

  // A job's stream lives beside it, under its queue's prefix (its shard's: app/cell.ts).
  function entryOf(job: AgentJob): Entry {
    const jobId = job.id!;
    let entry = entries.get(jobId);
    // A job id reused by a new job (an idempotency key sent again) is another incarnation: its own writer.
    if (!entry || entry.writer.incarnation !== job.timestamp) {
      entry = { writer: new JobStreamWriter(jobStreamKey(job.prefix, jobId), o, job.timestamp), calls: 0 };
      entries.set(jobId, entry);
    }
    return entry;
  }

  /** Writes `last`, waits until it is in Redis, then forgets the job (unless a new attempt took it over). */
  async function finish(job: AgentJob, last: StreamEvent): Promise<void> {
    const entry = entryOf(job);
    entry.writer.push(last);
    await entry.writer.drain();
    if (entries.get(job.id!) === entry) entries.delete(job.id!);
  }

  const progress = (job: AgentJob, p: ProgressEvent) => entryOf(job).writer.push({ kind: 'progress', progress: p });

  const setStage = defineLua(o.redis, 'job-stage-1.lua');
  /**
   * A streaming job's stage (`streaming`, `validating`) for the job view and Bull Board: one script call per
   * stage, not awaited (the model is never slowed by it), beside the stream writes the job makes anyway.
   */
  function stage(ctx: JobContext, name: Exclude<StoredStage['name'], 'calling_model'>): void {
    const job = ctx.job;
    const s = storedStage(name, job.attemptsMade + 1, ctx.model);
    progress(job, { stage: name, jobStage: name, attempt: s.attempt });
    setStage([agentJobKey(job.prefix, job.id!)], [JSON.stringify(s)]).catch((err: unknown) =>
      o.logger.debug({ jobId: job.id, err: err instanceof Error ? err.message : String(err) }, 'could not store job stage'),
    );
  }

  return {
    /** The `onText` sink of one model call. */
    sink(ctx: JobContext): ((text: string) => Promise<void>) | undefined {
      const job = ctx.job;
      if (!job.data.stream || !job.id) return undefined;
      const entry = entryOf(job);
      if (entry.calls++ > 0) progress(job, { stage: 'restarted', attempt: job.attemptsMade + 1 });
      const writer = entry.writer;
      // The first text of this call: the job is streaming (again, after a restart).
      let first = true;
      return async (text) => {
        if (first) {
          first = false;
          stage(ctx, 'streaming');
        }
        writer.push({ kind: 'text', text });
      };
    },

    /** The model answered a streaming job's call: its output is checked next. */
    answered(ctx: JobContext): void {
      if (ctx.job.data.stream && ctx.job.id) stage(ctx, 'validating');
    },

    /**
     * A guard delayed the job without using an attempt: it goes back to the queue (BullMQ emits neither completed
     * nor failed for it) and may run next in another process, so the job is forgotten here once this is written.
     */
    delayed(ctx: JobContext, reason: string, delayMs: number): void {
      if (ctx.job.data.stream && ctx.job.id) void finish(ctx.job, { kind: 'progress', progress: { stage: 'delayed', reason, delayMs: Math.max(0, Math.round(delayMs)) } });
    },

    /** Jobs whose stream this process is writing (a job is forgotten once it completed, failed or was delayed). */
    tracked(): number {
      return entries.size;
    },

    attach(worker: Worker<AgentJobData, AgentResult>): void {
      worker.on('active', (job) => {
        if (!job.data.stream || !job.id) return;
        entryOf(job).calls = 0;
        progress(job, { stage: 'started', attempt: job.attemptsMade + 1 });
      });
      worker.on('completed', (job, result) => {
        if (job.data.stream && job.id) void finish(job, { kind: 'result', result });
      });
      worker.on('failed', (job, err) => {
        if (!job?.data.stream || !job.id) return;
        if (isFinalFailure(job, err)) {
          void finish(job, { kind: 'error', error: err.message, state: err.message === CANCELLED_REASON ? 'cancelled' : 'failed' });
        } else {
          // The job goes back to the queue; its next attempt may run in another process.
          void finish(job, { kind: 'progress', progress: { stage: 'retrying', attempt: job.attemptsMade, reason: err.message } });
        }
      });
    },

    /** Waits for every pending write (on shutdown). */
    async drain(): Promise<void> {
      await Promise.all([...entries.values()].map((e) => e.writer.drain()));
    },
  };
}

export type StreamPublisher = ReturnType<typeof createStreamPublisher>;
