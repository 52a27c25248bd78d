import type { Job } from 'bullmq';
import type { RedisClient } from '../infra/redis/connection.js';
import { defineLua } from '../infra/lua.js';
import { cancelRequestedKey, jobStreamKey } from '../core/queue-keys.js';
import { PARK_SCORE_MIN, type CancelTarget, type FairScheduler } from '../fair/index.js';
import type { DlqStore } from './dlq-store.js';
import { retryRefusalError } from './dlq-service.js';
import { RemovalRefusedError } from '../core/errors.js';
import { childIncarnations } from '../queue/child-incarnations.js';

/**
 * agentq's side of what an operator does to one queue shard's agent jobs in BullMQ directly (Bull Board: its
 * remove, clean, empty, obliterate, promote, promote-all and retry are BullMQ's own calls, which know nothing of the fair dispatcher nor
 * of a job's stream). The board's adapter (src/producers/bull-board.ts) routes those calls through here.
 */
export interface BoardActions {
  /**
   * Removes one job with `remove` (BullMQ's; false when BullMQ refused, the job being locked), the dispatcher
   * following: a job dispatched and not fetched gives back its slot and its dispatch's charge, a laned one leaves its
   * lane, and any other slot whose job the removal took (a parent's children, a stalled job) is freed at once instead
   * of at the lease sweep. Refused: RemovalRefusedError (409, EJOBLOCKED: a worker is running it). `jobTs`: the
   * creation time of the job the board read: the dispatcher's cancel takes that job only, never one made under its
   * id since (the one read removed, its idempotency key sent again), whose lane, slot and charge stay its own, as
   * its life does (`remove` is the guarded removal, incarnation-removal.ts).
   */
  remove(jobId: string, jobTs: number, remove: () => Promise<boolean>): Promise<void>;
  /**
   * Removes a parent's children with `remove` (BullMQ's: the parent's remove, which takes them all with it, or with
   * `unprocessed` its removeUnprocessedChildren, which takes the pending ones no worker holds), the dispatcher
   * following each of this shard's agent children as `remove` follows its job, exactly once: a pending child
   * dispatched and not fetched gives back its slot and its dispatch's charge, a laned or timed one leaves its lane or
   * timer, and a finished one's slot a release has not given back yet is freed (its charge is that release's).
   * `remove` resolves false when BullMQ refused (a worker holds the parent or one of its children): then
   * RemovalRefusedError, 409, naming the held children (ECHILDLOCKED) or the parent itself (EJOBLOCKED). Each child
   * as read with the parent's children (its creation time, and still this parent's child): the dispatcher's cancel
   * never takes a job made under a child's id since (the child removed meanwhile), which the removal leaves.
   */
  removeChildren(parent: Pick<Job, 'id' | 'queueQualifiedName' | 'getDependencies' | 'getState'>, remove: () => Promise<boolean>, opts?: { unprocessed?: boolean }): Promise<void>;
  /**
   * After BullMQ removed jobs by itself (a clean, an obliterate): see
   * FairScheduler.removed (`refund` only for jobs the removal took from the wait list or prioritized set).
   */
  removed(jobIds?: string[], opts?: { refund?: boolean }): Promise<void>;
  /**
   * Promotes one job (BullMQ's promote is `promote`): a job the dispatcher holds on a timer (its delay, a retry's
   * backoff, a deferral) is due now, laned and dispatched as far as its org's fair share, concurrency cap and rate
   * limits allow (FairScheduler.promote); one laned or dispatched is due already. Only a job the dispatcher does not
   * hold goes through BullMQ's promote (a worker's fair gate then lanes it as due): for the dispatcher's own, that
   * moved the parked job to BullMQ's wait list, the gate parked it again, and it still waited for its timer.
   */
  promote(jobId: string, promote: () => Promise<void>): Promise<void>;
  /**
   * Promotes every delayed job of the shard (the board's "promote all"): every job the dispatcher holds on a timer is
   * due now, laned and dispatched once as far as each org's fair share, concurrency cap and rate limits allow
   * (FairScheduler.promoteAll, in bounded calls); a laned job is due already. A job BullMQ holds on a delay of its
   * own (not parked: a runtime without the fair dispatcher) goes through `promote` (BullMQ's, by id). BullMQ's
   * promote of the whole delayed set moved every parked job to its wait list: the gate parked each again, and the
   * timed ones still waited for their timers.
   */
  promoteAll(promote: (jobId: string) => Promise<void>): Promise<void>;
  /**
   * Retries a finished job. A failed one is a dead-letter entry: retried as the DLQ retries it (`dlq`: counted, and
   * refused, 409, for a flow child or pipeline step whose flow or run no longer waits for it, which would run and
   * bill a result nobody reads). A completed one with `retry` (BullMQ's), its last run's stream and cancel marker
   * cleared first. `bulk` (the board's "retry all"): a refused entry is left in the failed set and the others go
   * on (a refusal thrown there ended the board's whole request at its first page).
   */
  retry(jobId: string, state: 'failed' | 'completed', retry: () => Promise<void>, opts?: { bulk?: boolean }): Promise<void>;
}

/** BullMQ's own delayed jobs promoted at once by a promote-all (one round trip of BullMQ's promote each). */
const OWN_DELAYED_PAGE = 100;

export function createBoardActions(deps: {
  redis: RedisClient;
  /** The shard's queue prefix (its agentq keys': queue-keys.ts). */
  prefix: string;
  /** The shard's agent queue (BullMQ's keys of its sets; a refused removal's held children by their state). */
  queue: { toKey(type: string): string; getJobState(jobId: string): Promise<string> };
  scheduler: Pick<FairScheduler, 'cancel' | 'cancelMany' | 'removed' | 'promote' | 'promoteAll'>;
  /** The shard's dead-letter store: the board's retry of a failed job is a DLQ retry. */
  dlq?: Pick<DlqStore, 'get' | 'retry'>;
}): BoardActions {
  const { redis, prefix, scheduler } = deps;
  const reset = defineLua(redis, 'retry-reset-3.lua');
  // A parent's children named by their job keys: this shard's agent jobs, by id (a child of another queue is
  // none of the dispatcher's).
  const jobKeyPrefix = deps.queue.toKey('');
  const agentIds = (keys: string[]) => keys.filter((k) => k.startsWith(jobKeyPrefix)).map((k) => k.slice(jobKeyPrefix.length));
  /**
   * The parent's pending children as the dispatcher's cancel takes them: each by the job under its id now, its
   * creation time, if that job is a child of this parent (BullMQ's `parentKey`). A job under the id that is not
   * (the child removed since and a new job made under its id: a pipeline step's id is its run's and step's) is no
   * job of this removal: BullMQ's removal of the parent leaves it, and so does the cancel, with its lane, or slot and
   * charge. Taken by id alone (until 2026-12-07), they were given back while that job stayed in BullMQ.
   */
  const incarnations = (parent: Pick<Job, 'id' | 'queueQualifiedName'>, ids: string[]): Promise<CancelTarget[]> => childIncarnations(redis, { jobKeyPrefix, parent }, ids);

  // Why BullMQ refused a parent's removal: a worker holds one of its children (its agent ones named, those running
  // now), or the parent itself (a pipeline run its worker runs).
  const refusal = async (parent: Pick<Job, 'id' | 'getDependencies' | 'getState'>, pending: string[]) => {
    const states = await Promise.all(pending.map((id) => deps.queue.getJobState(id)));
    const held = pending.filter((_, i) => states[i] === 'active');
    if (held.length === 0 && (await parent.getState()) === 'active') return new RemovalRefusedError(parent.id!);
    return new RemovalRefusedError(parent.id!, held);
  };

  return {
    async remove(jobId, jobTs, remove) {
      // Before the removal: only then can the dispatcher tell a job no worker fetched (still in BullMQ's wait list,
      // unlocked: its charge goes back) from one that ran (its worker's release gives back what it did not spend).
      // A worker that fetches it between this and the removal finds no slot: its fair gate parks it and lanes it
      // again, and the removal then takes it from there, or fails as the board's remove of an active job does.
      // Only the job read: by id alone (until 2026-12-07) it took the lane, or the slot and charge, of a job made
      // under the id since, which the removal then removed too (BullMQ's, by id), or, guarded, kept without them.
      await scheduler.cancel(jobId, jobTs);
      if (!(await remove())) throw new RemovalRefusedError(jobId);
      // An agent job's removal takes that job alone (its parent is in the flows queue): its slot, if the
      // dispatcher still holds one (the job was fetched meanwhile), without walking every lease of the shard. A slot
      // freed goes to the org's next job in the same script call (`removed` dispatches, as `cancel` does).
      await scheduler.removed([jobId]);
    },
    async removeChildren(parent, remove, opts = {}) {
      // Read before the removal, which deletes the parent's sets with it. What BullMQ's removal of the parent takes
      // is these sets' children (includes/removeJobWithChildren.lua); its removeUnprocessedChildren, the pending ones.
      const children = await parent.getDependencies();
      const pending = agentIds(children.unprocessed ?? []);
      const settled = opts.unprocessed ? [] : agentIds([...Object.keys(children.processed ?? {}), ...Object.keys(children.ignored ?? {}), ...(children.failed ?? [])]);
      // As `remove` does for its job, before the removal: only then is a child no worker fetched told from one
      // that ran. One script call for them all, and all or none for the parent's remove: BullMQ refuses it while a
      // worker holds any child, and the others would then have lost their lanes and slots for nothing. Its
      // removeUnprocessedChildren leaves a held child and takes the others: each is taken here as it is there.
      // Each as the job read now (`incarnations`): one replaced since the children were read is left to its own.
      await scheduler.cancelMany(await incarnations(parent, pending), { whole: !opts.unprocessed });
      if (!(await remove())) throw await refusal(parent, pending);
      // A pending child fetched since (it found no slot: its fair gate parked it and laned it again) leaves that
      // lane; a finished child's slot whose release has not come is freed, its charge left to that release.
      // Without a refund: none of these can be told from a child that ran. A child given back above is forgotten.
      await scheduler.removed([...pending, ...settled]);
    },
    async removed(jobIds, opts) {
      await scheduler.removed(jobIds, opts);
    },
    async promote(jobId, promote) {
      if ((await scheduler.promote(jobId)) === 'unknown') await promote();
    },
    async promoteAll(promote) {
      await scheduler.promoteAll();
      // BullMQ's own delayed jobs: scored below every parked one. Their count first, so the walk ends even where a
      // promote leaves its job (one gone meanwhile); each page is what the promotes before it left.
      const delayed = deps.queue.toKey('delayed');
      const below = `(${PARK_SCORE_MIN}`;
      let left = await redis.zcount(delayed, '-inf', below);
      while (left > 0) {
        const ids = await redis.zrangebyscore(delayed, '-inf', below, 'LIMIT', 0, Math.min(left, OWN_DELAYED_PAGE));
        if (ids.length === 0) break;
        await Promise.all(ids.map((id) => promote(id)));
        left -= ids.length;
      }
    },
    async retry(jobId, state, retry, opts = {}) {
      const entry = state === 'failed' ? await deps.dlq?.get(jobId) : undefined;
      if (entry) {
        const res = await deps.dlq!.retry(entry, {});
        if (typeof res === 'number') return;
        // Gone from the failed set since it was read: BullMQ's own retry below answers as it always does.
        if (res !== 'not_failed') {
          if (opts.bulk) return;
          throw retryRefusalError(res, entry);
        }
      }
      // In one script with the check that the job is still in `state`: a run started since keeps its stream.
      await reset([deps.queue.toKey(state), jobStreamKey(prefix, jobId), cancelRequestedKey(prefix, jobId)], [jobId]);
      await retry();
    },
  };
}
