import { UnrecoverableError, type Worker } from 'bullmq';
import type { Logger } from '../../shared/core/logger.js';
import type { AgentJobData, AgentResult } from '../../shared/core/types.js';
import { classifyFailure, isUnrecoverable } from '../../shared/core/dlq-classify.js';
import type { DlqStore } from '../../shared/ops/dlq-store.js';
import type { OpsMetrics } from '../../shared/ops/metrics.js';

/**
 * Listens to one agent worker: metrics for every start, completion and failed attempt, and for a job
 * that failed for good, its DLQ class in Redis, one log line and a metric. That log line is the dead-letter
 * log of record (error level; cancelled jobs, which a caller asked for, at info).
 */
export function attachOpsListeners(worker: Worker<AgentJobData, AgentResult>, deps: { store: DlqStore; metrics: OpsMetrics; logger: Logger }) {
  const { metrics, store, logger } = deps;
  // The job itself is the metrics' JobFacts (its data and its times, read where they are): no copy per event.

  worker.on('active', (job) => metrics.jobStarted(job));
  worker.on('completed', (job, result) => {
    if (result) metrics.jobCompleted(job, result);
  });
  worker.on('failed', (job, err) => {
    if (!job) return;
    const unrecoverable = err instanceof UnrecoverableError || isUnrecoverable(err);
    const c = classifyFailure(err as Error & { code?: unknown }, { unrecoverable });
    metrics.jobFailed(job, c.type);
    // The same test BullMQ applies before retrying (see Job.shouldRetryJob).
    const final = unrecoverable || job.attemptsMade >= (job.opts.attempts ?? 1);
    if (!final) return;
    metrics.deadLettered(job.data.agent, c.class);
    // The same ids on both lines: whether or not Redis took the class, an operator finds the line by org or request.
    const about = {
      jobId: job.id,
      orgId: job.data.orgId,
      agent: job.data.agent,
      action: job.data.action,
      ...(job.data.requestId ? { requestId: job.data.requestId } : {}),
      ...(job.data.userId ? { userId: job.data.userId } : {}),
      class: c.class,
      type: c.type,
      reason: err.message.slice(0, 500),
      attempts: job.attemptsMade,
    };
    void store
      .recordFailure(job, c, err.message)
      .then((dlqRetries) => {
        const line = { ...about, dlqRetries };
        if (c.class === 'cancelled') logger.info(line, 'job dead-lettered');
        else logger.error(line, 'job dead-lettered');
      })
      .catch((recordErr: unknown) => logger.error({ ...about, err: (recordErr as Error).message }, 'job dead-lettered (class not stored)'));
  });
}
