import type { Job } from 'bullmq';

/**
 * The far-future timestamp at which parked jobs sit in BullMQ's delayed ZSET. BullMQ scores delayed
 * jobs `timestamp * 0x1000 + counter`; below 2^41 ms every such score is an exact double (< 2^53).
 * One day of margin keeps `(PARK_AT_MS + 1) * 0x1000 - 1` exact too. BullMQ only promotes delayed jobs
 * whose timestamp has passed, so it never runs a parked job by itself: only the fair dispatcher does.
 */
export const PARK_AT_MS = 2 ** 41 - 86_400_000;

/** Lowest delayed-ZSET score of a parked job (Lua compares against this). */
export const PARK_SCORE_MIN = PARK_AT_MS * 0x1000;

/**
 * Options for `queue.add` that park the job. `timestamp` is pinned so that BullMQ's
 * `timestamp + delay` lands exactly on PARK_AT_MS (it would drift by the client's clock otherwise).
 */
export function parkedJobOptions(jobId: string, priority?: number, now = Date.now()): { jobId: string; timestamp: number; delay: number; priority?: number } {
  return { jobId, timestamp: now, delay: PARK_AT_MS - now, ...(priority ? { priority } : {}) };
}

/**
 * True while the job waits for the dispatcher (BullMQ sets `delay` to 0 once it is promoted). A job parked
 * again after it ran (retry, deferral) keeps its creation timestamp while BullMQ counts its `delay` from the
 * move, so the test is on the delay itself: no real delay in agentq comes near the years to PARK_AT_MS.
 */
export function isParked(job: Pick<Job, 'timestamp' | 'delay'>, now = Date.now()): boolean {
  return job.delay > 0 && (job.timestamp + job.delay >= PARK_AT_MS || job.delay >= PARK_AT_MS - now - 86_400_000);
}

/**
 * Moves an active job back to parked (e.g. a retry with backoff, or a run-time delay); the caller then
 * calls `scheduler.repark(jobId, notBeforeMs, reason)` and throws BullMQ's `DelayedError`.
 */
export async function parkActiveJob(job: Job, token: string): Promise<void> {
  await job.moveToDelayed(PARK_AT_MS, token);
}
