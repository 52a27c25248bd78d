import type { RedisClient } from '../infra/redis/connection.js';
import { defineLua } from '../infra/lua.js';
import { cancelRequestedKey, fairKickChannel, jobStreamKey } from '../core/queue-keys.js';
import type { FairScheduler } from '../fair/index.js';

/**
 * agentq's side of what an operator does to one queue shard's agent jobs in BullMQ directly (Bull Board: its
 * remove, clean, empty, obliterate and retry are BullMQ's own calls, which know nothing of the fair dispatcher nor
 * of a job's stream). The board's adapter (src/producers/bull-board.ts) routes those calls through here.
 */
export interface BoardActions {
  /**
   * Removes one job with `remove` (BullMQ's), the dispatcher following: a job dispatched and not fetched gives
   * back its slot and its dispatch's charge, a laned one leaves its lane, and any other slot whose job the removal
   * took (a parent's children, a stalled job) is freed at once instead of at the lease sweep.
   */
  remove(jobId: string, remove: () => Promise<void>): Promise<void>;
  /**
   * After BullMQ removed jobs by itself (a clean, an obliterate, a parent's unprocessed children): see
   * FairScheduler.removed (`refund` only for jobs the removal took from the wait list or prioritized set).
   */
  removed(jobIds?: string[], opts?: { refund?: boolean }): Promise<void>;
  /** Retries a finished job with `retry` (BullMQ's), its last run's stream and cancel marker cleared first. */
  retry(jobId: string, state: 'failed' | 'completed', retry: () => Promise<void>): Promise<void>;
}

export function createBoardActions(deps: {
  redis: RedisClient;
  /** The shard's queue prefix (its agentq keys': queue-keys.ts). */
  prefix: string;
  /** The shard's agent queue (BullMQ's keys of its sets). */
  queue: { toKey(type: string): string };
  scheduler: Pick<FairScheduler, 'cancel' | 'removed'>;
}): BoardActions {
  const { redis, prefix, scheduler } = deps;
  const reset = defineLua(redis, 'retry-reset-3.lua');
  // Slots given back: the lanes that waited for one go at the next dispatch, which the workers' loops run on this
  // message (this process, the API's, may have none), instead of at their next release or safety poll.
  // A lost message only leaves them to those: the removal is done either way.
  const kick = () => redis.spublish(fairKickChannel(prefix), '1').catch(() => 0);

  return {
    async remove(jobId, remove) {
      // Before the removal: only then can the dispatcher tell a job no worker fetched (still in BullMQ's wait list,
      // unlocked: its charge goes back) from one that ran (its worker's release gives back what it did not spend).
      // A worker that fetches it between this and the removal finds no slot: its fair gate parks it and lanes it
      // again, and the removal then takes it from there, or fails as the board's remove of an active job does.
      const cancelled = await scheduler.cancel(jobId);
      let freed = 0;
      try {
        await remove();
        // What else the removal took and the dispatcher still holds a slot for.
        freed = (await scheduler.removed()).freed;
      } finally {
        if (cancelled || freed > 0) await kick();
      }
    },
    async removed(jobIds, opts) {
      const { freed } = await scheduler.removed(jobIds, opts);
      if (freed > 0) await kick();
    },
    async retry(jobId, state, retry) {
      // In one script with the check that the job is still in `state`: a run started since keeps its stream.
      await reset([deps.queue.toKey(state), jobStreamKey(prefix, jobId), cancelRequestedKey(prefix, jobId)], [jobId]);
      await retry();
    },
  };
}
