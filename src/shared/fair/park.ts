import { Job, optsEncodeMap, type JobsOptions } from 'bullmq';

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
 * The state the API shows for a job parked for the dispatcher (its own `delayMs` over, or none): `prioritized` for a
 * job enqueued with a priority, as BullMQ shows it once the dispatch put it in its prioritized set and as its enqueue
 * answered, `waiting` for any other. A caller sees one state from its enqueue until a worker takes the job: until
 * 2026-12-07 a priority job's enqueue said `prioritized`, GET said `waiting` until its dispatch, then `prioritized`.
 * `priority`: the job hash's field (a string when read from Redis). job-list-page-7.lua applies the same rule.
 */
export function parkedState(job: { priority?: number | string }): 'prioritized' | 'waiting' {
  return Number(job.priority ?? 0) > 0 ? 'prioritized' : 'waiting';
}

/**
 * Moves an active job back to parked (e.g. a retry with backoff, or a run-time delay); the caller then
 * calls `scheduler.repark(jobId, delayMs, reason, job.attemptsStarted)` and throws BullMQ's `DelayedError`.
 */
export async function parkActiveJob(job: Job, token: string): Promise<void> {
  await job.moveToDelayed(PARK_AT_MS, token);
}

/** A parked BullMQ job's hash fields as BullMQ's add stores them. */
export interface ParkedJobFields {
  name: string;
  /** The job's data, JSON. */
  data: string;
  /** Its options in BullMQ's stored form, JSON. */
  opts: string;
  timestamp: number;
  delay: number;
  priority: number;
}

/**
 * A parked job's BullMQ hash fields, built by BullMQ's own `Job` (its option defaults, backoff normalisation
 * and option checks) as `queue.add` builds them, for the dispatcher's enqueue to store in its own call
 * (FairEntry `store`). The options take BullMQ's stored form (its `optsAsJSON`: a few long names shortened).
 */
export function parkedJobFields(queue: ConstructorParameters<typeof Job>[0], name: string, data: unknown, opts: JobsOptions & { jobId: string }): ParkedJobFields {
  // Only a parked job (parkedJobOptions) may be stored this way: anything else is BullMQ's add to make.
  if (!(typeof opts.delay === 'number' && opts.delay > 0 && typeof opts.timestamp === 'number') || opts.parent || 'repeat' in opts || opts.deduplication) {
    throw new RangeError(`job ${opts.jobId}: only a parked job without parent, repeat or deduplication is stored by the dispatcher`);
  }
  const job = new Job(queue, name, data, opts, opts.jobId);
  const json = job.asJSON();
  // BullMQ's own checks (option sizes, exclusive parent options, priority range) before anything is stored.
  (job as unknown as { validateOptions(j: unknown): void }).validateOptions(json);
  const stored: Record<string, unknown> = {};
  const encode = optsEncodeMap as Record<string, string>;
  for (const [k, v] of Object.entries(job.opts)) {
    if (v === undefined) continue;
    if (k === 'telemetry') {
      const t = v as { metadata?: string; omitContext?: boolean };
      if (t.metadata !== undefined) stored.tm = t.metadata;
      if (t.omitContext !== undefined) stored.omc = t.omitContext;
    } else stored[encode[k] ?? k] = v;
  }
  return { name, data: json.data, opts: JSON.stringify(stored), timestamp: job.timestamp, delay: opts.delay, priority: job.priority };
}
