import { Job, type QueueEvents } from 'bullmq';
import type { RedisClient } from '../shared/infra/redis/connection.js';
import { ConflictError, NotFoundError } from '../shared/core/errors.js';
import type { AgentQueue } from '../shared/queue/agent-queue.js';
import { cancelChannel, CANCELLED_REASON, cancelMessage, cancelRequestedKey, shownState } from '../shared/core/cancel.js';
import { encodeEvent } from '../shared/core/stream-event.js';
import type { AgentJobData, AgentResult } from '../shared/core/types.js';
import { isParked, parkedState, PARK_SCORE_MIN, type FairScheduler } from '../shared/fair/index.js';
import { createJobWaiters } from '../shared/queue/job-waiters.js';
import { createCancelRemoval, readCancelTombstone } from '../shared/queue/cancel-tombstone.js';
import { deriveStage, type JobStage } from '../shared/core/job-stage.js';

export interface JobView {
  id: string;
  agent: string;
  action: string;
  state: string;
  /** The named stage (job-stage.ts): from the state, why it waits, and the stage its worker stored. */
  stage: JobStage;
  /** The job hash's progress field as stored: a running attempt's stage, once a worker wrote one (else 0). */
  progress: unknown;
  result?: AgentResult;
  error?: string;
  attempts: number;
  createdAt: string;
  finishedAt?: string;
  /** The service tier the job runs at (absent = standard) and its deadline, when it gave one. */
  tier?: string;
  deadline?: string;
  /** Why a waiting job has not started (fair dispatcher): the reason, the limit's name and an ETA when known. */
  waitingFor?: { reason: string; limit?: string; eta?: string; position?: number };
}

/** How long the stream of a job cancelled before it ran keeps its one (terminal) entry for late readers. */
const CANCELLED_STREAM_TTL_S = 3600;

const FINISHED = new Set(['completed', 'failed', 'cancelled']);
export const isFinished = (state: string) => FINISHED.has(state);

/**
 * A job's hash is read before its state (BullMQ's `Job.fromId`, then `getState`): a job that finished in
 * between reads "completed" or "failed" from a hash with no result or reason yet. Then read the hash again.
 */
export const finishedSinceRead = (job: { finishedOn?: number }, state: string) => (state === 'completed' || state === 'failed') && !job.finishedOn;

export function toJobView(job: Job<AgentJobData, AgentResult>, rawState: string): JobView {
  // A parked job waits for the fair dispatcher: to the caller it is waiting (prioritized with a priority), not delayed.
  if (rawState === 'delayed' && isParked(job)) rawState = parkedState(job);
  const state = shownState(rawState, job.failedReason);
  return {
    id: job.id!,
    agent: job.data.agent,
    action: job.data.action,
    state,
    stage: deriveStage({ state, attemptsMade: job.attemptsMade, progress: job.progress }),
    progress: job.progress,
    ...(job.returnvalue ? { result: job.returnvalue } : {}),
    ...(job.failedReason ? { error: job.failedReason } : {}),
    attempts: job.attemptsMade,
    ...(job.data.tier ? { tier: job.data.tier } : {}),
    ...(job.data.deadlineAt ? { deadline: new Date(job.data.deadlineAt).toISOString() } : {}),
    createdAt: new Date(job.timestamp).toISOString(),
    ...(job.finishedOn ? { finishedAt: new Date(job.finishedOn).toISOString() } : {}),
  };
}

/**
 * Reads, waits for and cancels jobs on behalf of one org. A job of another org is reported exactly like a
 * missing one, so ids cannot be probed across tenants.
 */
export function createJobService(deps: {
  queue: AgentQueue;
  queueEvents: () => QueueEvents;
  redis: RedisClient;
  prefix: string;
  cancelledTtlS: number;
  scheduler: Pick<FairScheduler, 'why' | 'cancel' | 'removed'>;
  /** A batch-tier job's batch (name, state) while it waits for it. */
  batchView?: (jobId: string) => Promise<{ model: string; batch?: string; state: string } | undefined>;
  /** A removed batch-tier job leaves the batch tier (`jobTs`: its creation time, so only that job's request). */
  batchCancel?: (jobId: string, jobTs: number) => Promise<unknown>;
}) {
  const { queue, redis, prefix } = deps;
  // One set of QueueEvents listeners for every long poll of this process, however many wait on one job.
  const waiters = createJobWaiters(deps.queueEvents);
  const removal = createCancelRemoval({ queue, prefix });

  async function load(orgId: string, id: string): Promise<Job<AgentJobData, AgentResult>> {
    const job = await Job.fromId<AgentJobData, AgentResult>(queue, id);
    if (!job || job.data?.orgId !== orgId) throw new NotFoundError('job not found');
    return job;
  }

  async function tombstone(orgId: string, id: string): Promise<JobView | undefined> {
    const view = (await readCancelTombstone(redis, prefix, orgId, id)) as JobView | undefined;
    // Tombstones written before the view had a stage lack one.
    return view && { ...view, stage: { name: 'done', outcome: 'cancelled' } };
  }

  /**
   * Parked for the dispatcher, by its score in the delayed set (as the fair scripts decide). The job hash
   * cannot tell for a job parked again after it started (a retry, a deferral, a DLQ replay): BullMQ then
   * stores the delay from that moment but keeps the creation timestamp, so `isParked(job)` misses it.
   */
  async function parked(job: Job): Promise<boolean> {
    if (isParked(job)) return true;
    const score = await redis.zscore(queue.toKey('delayed'), job.id!);
    return score !== null && Number(score) >= PARK_SCORE_MIN;
  }

  async function get(orgId: string, id: string): Promise<JobView> {
    try {
      let job = await load(orgId, id);
      const state = await job.getState();
      // The view never says "failed" without the reason (or "completed" without the result).
      if (finishedSinceRead(job, state)) job = await load(orgId, id);
      const isParkedNow = state === 'delayed' && (await parked(job));
      const view = toJobView(job, isParkedNow ? parkedState(job) : state);
      if (isParkedNow) {
        const why = await deps.scheduler.why(id);
        if (why) {
          // Its own `delayMs` still runs: delayed, as the caller asked.
          if (why.reason === 'delayed') view.state = 'delayed';
          view.waitingFor = {
            reason: why.reason,
            ...(why.limit ? { limit: why.limit } : {}),
            ...(why.etaMs ? { eta: new Date(why.etaMs).toISOString() } : {}),
            ...(why.position !== undefined ? { position: why.position } : {}),
          };
          view.stage = { name: 'waiting', ...view.waitingFor };
          const batch = why.reason === 'waiting_for_batch' ? await deps.batchView?.(id) : undefined;
          if (batch) view.stage = { name: 'waiting_for_batch', ...batch, ...(view.waitingFor.eta ? { eta: view.waitingFor.eta } : {}) };
        }
      }
      return view;
    } catch (err) {
      if (!(err instanceof NotFoundError)) throw err;
      const view = await tombstone(orgId, id);
      if (view) return view;
      throw err;
    }
  }

  /**
   * The view right after the job's `completed`/`failed` event: the state is the event's, so one read of the
   * hash (with the result or reason) is enough. A hash without `finishedOn` means the job moved on since
   * (a retry or DLQ replay); gone means removed: both take the full read.
   */
  async function finishedView(orgId: string, id: string, state: 'completed' | 'failed'): Promise<JobView> {
    try {
      const job = await load(orgId, id);
      if (job.finishedOn) return toJobView(job, state);
    } catch (err) {
      if (!(err instanceof NotFoundError)) throw err;
    }
    return get(orgId, id);
  }

  return {
    get,
    /** Whether the org's job of this id was removed by a cancel (its tombstone is still kept): shown "cancelled". */
    tombstoned: async (orgId: string, id: string) => (await tombstone(orgId, id)) !== undefined,
    /** The long polls in flight, and the QueueEvents they share (tests check its listeners stay bounded). */
    waiters,
    queueEvents: deps.queueEvents,
    /** Answers every long poll in flight now with the job's current view (the process is closing). */
    endWaits: () => waiters.endAll(),

    /** Long poll: returns as soon as the job finishes, or its current view after `waitMs`. */
    async wait(orgId: string, id: string, waitMs: number): Promise<JobView> {
      if (waitMs <= 0) return get(orgId, id);
      // Registered before the read: a finish after the read wakes it (once the events reader is live, see
      // job-waiters.ts), and a finish before it shows in the read. So no state re-check after registering.
      const waiter = waiters.register(id, waitMs);
      let view: JobView;
      try {
        view = await get(orgId, id);
      } catch (err) {
        waiter.cancel();
        throw err;
      }
      if (isFinished(view.state)) {
        waiter.cancel();
        return view;
      }
      // The first polls of a process: its events reader may start after the job finished, so check the state
      // (again, backing off, until the reader is live).
      if (!waiter.live) {
        void waiter.verify(async () => {
          const state = await queue.getJobState(id);
          return state === 'completed' || state === 'failed' || state === 'unknown';
        });
      }
      const end = await waiter.ended;
      return end === 'completed' || end === 'failed' ? finishedView(orgId, id, end) : get(orgId, id);
    },

    /**
     * Waiting or delayed jobs are removed and leave a "cancelled" tombstone; an active job is aborted by the
     * worker that holds it (it ends failed with reason "cancelled" and is not retried). `read`: the job's creation
     * time as its caller read it (a flow's cancel of its children, `childIncarnations`): another job under the id (the
     * one read removed since and a new one made under its id) is not found, and left alone.
     */
    async cancel(orgId: string, id: string, read?: { ts: number }): Promise<JobView> {
      const job = await load(orgId, id).catch(async (err) => {
        if (err instanceof NotFoundError && (await tombstone(orgId, id))) throw new ConflictError('job is already cancelled');
        throw err;
      });
      // From here on the cancel acts for the job loaded (its creation time: marker, dispatcher, removal).
      if (read && job.timestamp !== read.ts) throw new NotFoundError('job not found');
      const state = await job.getState();
      if (isFinished(state) || job.failedReason === CANCELLED_REASON) throw new ConflictError(`job is already ${state}`);
      // The marker and the message, in one round trip, whatever the state read. The marker (its value names the
      // job it cancels, its timestamp: one that outlives the job never cancels a later job of the same id, an
      // idempotency key sent again once it was removed) is read by the claim of a worker that fetches the job from
      // here on, or fetched it and has not started it (it misses the message): it fails the job as cancelled where
      // it would otherwise park it again for its lane (its slot taken back below) and run it later. The message
      // reaches every attempt that runs, also one BullMQ reads as waiting: its lock lapsed while its worker's
      // event loop was blocked, the stalled check moved the job back to wait, and the attempt runs on. Told only
      // when the job read active, it called the model outside its org's cap once the slot was freed below. The
      // message names the job's timestamp as the marker does: a worker aborts an attempt of the job read only, not
      // one of a job made under the id since this load (the one read removed, its idempotency key sent again).
      await redis.multi().set(cancelRequestedKey(prefix, id), String(job.timestamp), 'EX', deps.cancelledTtlS).spublish(cancelChannel(prefix), cancelMessage(id, job.timestamp)).exec();
      if (state !== 'active') {
        try {
          // Out of its org's line first, so the dispatcher never hands out a slot for a removed job. What it gives
          // back (a slot and charge: dispatched, not fetched) goes to the org's next job in the same script call,
          // this job counted out of the wait list it is removed from below (a wake-up left goes to the workers).
          // Only the job read (its creation time): a job made under the id since (the one read removed meanwhile,
          // its idempotency key sent again) keeps its lane, slot and charge, as it keeps its life below.
          await deps.scheduler.cancel(id, job.timestamp);
          // Else its request still goes into the next batch (billed), and its answer to a later job of this id.
          // Before the removal: the tombstone must follow the removal at once, since a long poll or a stream
          // woken by the removal reads it.
          await deps.batchCancel?.(id, job.timestamp);
          const view = { ...toJobView(job, 'cancelled'), state: 'cancelled', stage: { name: 'done', outcome: 'cancelled' } as JobStage, finishedAt: new Date().toISOString() };
          // Removed with its tombstone in one step: a long poll or a stream woken by the removal reads the tombstone,
          // and one written later could land on a new job of the id (an idempotency key sent again once its record
          // lapsed), whose add deletes an earlier job's tombstone. The same step drops the cancel marker (no worker
          // holds the job: an attempt whose lock lapsed has had the message) and, for a streaming job, writes its
          // stream's end, since no worker will: its SSE readers get it at once, not at their next heartbeat.
          const outcome = await removal(job, {
            tombstone: { ...view, orgId },
            ttlS: deps.cancelledTtlS,
            ...(job.data.stream ? { stream: { entry: encodeEvent({ kind: 'error', error: CANCELLED_REASON, state: 'cancelled' }, job.timestamp), ttlS: CANCELLED_STREAM_TTL_S } } : {}),
          });
          if (outcome === 'locked') throw new Error(`job ${id} could not be removed: a worker holds it`);
          if (outcome === 'finished') throw new ConflictError(`job is already ${await job.getState()}`);
          if (outcome !== 'removed') {
            // The job read is gone (another cancel or a removal came first); a job made under the id since is another job.
            if (await tombstone(orgId, id)) throw new ConflictError('job is already cancelled');
            throw new NotFoundError('job not found');
          }
          // After the removal and its tombstone (one step, above). A job its attempt parked (a
          // deferral, a retry) still holds its slot, which scheduler.cancel leaves to the attempt's repark; that
          // repark now finds the job gone and moves nothing, so the slot would stay held until the lease sweep (the
          // org one job short of its cap). Freed here, as the board's remove does, without a refund (the attempt
          // ran: its worker's refund or usage stands). The slot goes to the org's next job in the same script call
          // (a wake-up it leaves goes to the workers' loops); a failure here leaves it to the lease sweep: the cancel
          // itself is done.
          await deps.scheduler.removed([id]).catch(() => undefined);
          return view;
        } catch (err) {
          if (err instanceof ConflictError || err instanceof NotFoundError) throw err;
          // It was picked up between getState and remove: cancel it as an active job instead (its claim may
          // already have failed it on the marker).
          const now = await job.getState();
          if (now !== 'active' && !isFinished(now)) throw err;
        }
      }
      // Its worker ends it (marker and message above).
      return { ...toJobView(job, 'active'), state: 'cancelling' };
    },
  };
}

export type JobService = ReturnType<typeof createJobService>;
