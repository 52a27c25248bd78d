import type { Job, MinimalJob } from 'bullmq';
import type { Logger } from '../shared/core/logger.js';
import type { AgentJobData, AgentResult } from '../shared/core/types.js';
import type { StoredStage } from '../shared/core/job-stage.js';
import { MODEL_WIDE_DELAYS, type DelayReason } from '../shared/core/outcomes.js';
import { isBatchLane, PARK_AT_MS, parkActiveJob, type ClaimAppend, type ClaimLookup, type DispatchLoop, type ChargeCorrection, type FairEntry, type FairScheduler } from '../shared/fair/index.js';
import type { BucketRequest } from '../shared/limits/token-bucket.js';
import type { OrgRequests } from './middleware.js';

/** What a claim carries besides the job's id and stage (FairScheduler.claim). */
type ClaimCarried = NonNullable<Parameters<FairScheduler['claim']>[2]>;

type AgentJob = Job<AgentJobData, AgentResult>;

/**
 * Charge corrections are summed for this long before a claim or release carries them (the rate limiter's own
 * corrections were written every 100 ms): at any job rate the buckets cost one correction per org and model
 * per interval, not one per job.
 */
const CORRECTION_BATCH_MS = 100;
/** Longest corrections wait for a claim or release to carry them: then they are sent on their own. */
const CORRECTION_MAX_DELAY_MS = 250;

/**
 * The worker's side of fair dispatch. A job normally reaches a worker only after the dispatcher gave it a
 * slot; anything else (a retry BullMQ promoted after its backoff, a DLQ replay, a job promoted by hand in BullMQ,
 * not through the dispatcher as Bull Board's promote and promote-all are) is parked again and handed to the dispatcher, so no path runs a job outside its org's limits.
 * Slots are released when BullMQ has recorded the outcome (completed / failed events), in batches; a claim
 * that comes before the batch is sent carries it (one script call for the finished job and the next one).
 */
export function createFairGate(deps: {
  scheduler: Pick<FairScheduler, 'claim' | 'enqueue' | 'release' | 'repark' | 'blockModel' | 'takeRequest' | 'giveBackRequest'>;
  loop: DispatchLoop;
  /** The fair entry of a job (org, model the dispatcher limits it by, priority, token estimate). */
  entryOf: (job: AgentJob) => FairEntry;
  logger: Logger;
  /** How long charge corrections are summed before a claim or release carries them (default CORRECTION_BATCH_MS). */
  correctionBatchMs?: number;
  /**
   * Where a model-wide delay blocks the model (default: `scheduler.blockModel`, this queue shard's dispatcher). With
   * queue shards, every shard's dispatcher: a provider's limit or an open breaker holds every org's lanes.
   */
  blockModel?: FairScheduler['blockModel'];
}) {
  const blockModel: FairScheduler['blockModel'] = deps.blockModel ?? ((model, delayMs, reason) => deps.scheduler.blockModel(model, delayMs, reason));
  let pending: string[] = [];
  /** The flush under way (sending), if any. */
  let flushing: Promise<void> | undefined;
  /** A flush is armed for the next turn of the event loop (`scheduleFlush`) and has not looked yet. */
  let armed = false;
  /** Charge corrections waiting for the next claim or release, summed per org and model. */
  const batchMs = deps.correctionBatchMs ?? CORRECTION_BATCH_MS;
  const corrections = new Map<string, ChargeCorrection>();
  let correctionTimer: NodeJS.Timeout | undefined;
  /** When the oldest correction waiting was summed in. */
  let correctionsSince = 0;

  /** The corrections waiting, once they have been summed for `correctionBatchMs` (or at once with `all`). */
  function takeCorrections(all = false): ChargeCorrection[] {
    if (corrections.size === 0 || (!all && Date.now() - correctionsSince < batchMs)) return [];
    clearTimeout(correctionTimer);
    correctionTimer = undefined;
    const out = [...corrections.values()];
    corrections.clear();
    return out;
  }
  let forceCorrections = false;
  /**
   * Attempts admitted here whose processor has not ended yet (`ended`). While none is, no claim from this process
   * will come to carry the corrections within the batch window (a throttled org, a quiet queue): a release sent then
   * takes them all, instead of a call of their own CORRECTION_MAX_DELAY_MS later. Per attempt (BullMQ's Job object of
   * each fetch), not per id: a job fetched again after a stall may run here twice at once. Forgotten when the
   * attempt's processor ends, not when BullMQ records its outcome: an attempt that lost its lock gets no 'completed'
   * or 'failed' event (BullMQ refuses its outcome and emits a worker 'error'), and was kept here for good until
   * 2026-12-07 (a leak, and a release that never again carried the corrections at once).
   */
  const running = new Set<AgentJob>();
  /** Jobs this gate admitted on a dispatcher slot: their dispatch charged the org's and the model's buckets. */
  const charged = new WeakSet<AgentJob>();
  /**
   * Backoffs of attempts BullMQ just parked for a retry (same process: the strategy runs before 'failed'), keyed by
   * the attempt (BullMQ's Job object of its fetch: the strategy and the 'failed' event get the same one), not by id,
   * and weakly. The strategy runs after the attempt's processor ended (`ended` comes too early to forget it), and an
   * attempt that lost its lock gets no 'failed' event (BullMQ refuses its failure): its entry goes with the attempt,
   * once BullMQ lets go of it. Keyed by id until 2026-12-07, such an entry stayed until this process admitted the
   * same id again (a leak in a long-running worker), and one noted by a stalled attempt running here beside the
   * attempt that fetched it again turned that attempt's completion into a retry.
   */
  const retries = new WeakMap<object, number>();

  async function flush(): Promise<void> {
    // The release dispatches in its own script call, and only if it would find work (an active lane,
    // something due): a throttled org's finished job would only find its lane asleep, and the armed wake-up
    // dispatches it anyway.
    let failed = false;
    for (;;) {
      // Forced once CORRECTION_MAX_DELAY_MS is over (also when that happens while this loop awaits). Otherwise
      // they only ride on a release this flush sends anyway: a flush whose finished jobs a claim already carried
      // (the usual one, a turn after each job) leaves them to the next claim, not to a round trip of their own.
      const force = forceCorrections || (running.size === 0 && pending.length > 0);
      const correct = force || pending.length > 0 ? takeCorrections(force) : [];
      forceCorrections = false;
      if (pending.length === 0 && correct.length === 0) break;
      const ids = pending;
      pending = [];
      // Swept lately by this process (the releases of one wake-up's jobs come milliseconds apart): only an active lane
      // is looked for.
      const sweep = deps.loop.sweepDue();
      try {
        const r = await deps.scheduler.release(ids, { dispatch: true, ...(sweep ? {} : { sweep: false }), ...(correct.length ? { correct } : {}) });
        // It swept what was due, as the loop's safety poll does: the next poll may be skipped.
        if (sweep) deps.loop.swept();
        if (r.dispatched) deps.loop.absorb(r.dispatched);
      } catch (err) {
        failed = true;
        // The slots' leases expire and the dispatcher's sweep frees them: slower, never lost. Corrections are
        // not sent again: whether they were applied is unknown, and a bucket off by one batch refills anyway.
        deps.logger.warn({ err, jobs: ids.length, corrections: correct.length }, 'fair: could not release slots; leases will recover them');
      }
    }
    flushing = undefined;
    if (failed) void deps.loop.kick();
  }

  /**
   * Sent on the next turn of the event loop, not at once: the worker's next claim usually comes first (BullMQ
   * hands over the next job in the same call that finished this one) and takes the batch with it.
   */
  function queueRelease(...ids: string[]): void {
    pending.push(...ids);
    scheduleFlush();
  }

  function scheduleFlush(): void {
    if (armed || flushing) return;
    armed = true;
    setImmediate(flushIfAny);
  }

  /**
   * The armed flush: started only when there is something to send. At one job after another the next claim took the
   * finished job's release before this turn came (the usual case), and a flush with nothing to send did nothing: a
   * promise, its callback and an async call per job were made for it until 2026-12-07.
   */
  function flushIfAny(): void {
    armed = false;
    if (flushing || (pending.length === 0 && !forceCorrections)) return;
    // Started a microtask later, as before: flush clears `flushing` when it ends, which must come after this assignment.
    flushing = Promise.resolve().then(flush);
  }

  /**
   * The attempt ends without having called the model its dispatch paid for (`JobContext.prepaid` never
   * spent: a result- or semantic-cache hit, a cancel, a quota or breaker refusal before the call): the request
   * and the token estimate go back to the org's and the model's buckets. A cache hit costs no model quota.
   * Once per admission; a job admitted without a slot was never charged.
   */
  function refundUnspent(job: AgentJob): void {
    if (!charged.has(job)) return;
    charged.delete(job);
    const entry = deps.entryOf(job);
    // A batch lane is limited by no online bucket: its dispatch charged nothing.
    if (isBatchLane(entry.model)) return;
    gate.correct(entry.orgId, entry.model, { orgTokens: -entry.estTokens, modelTokens: -entry.estTokens, requests: -1 });
  }

  const gate = {
    /**
     * 'run' when the job holds a dispatcher slot and may run; 'run_unpaid' when it holds the slot but an earlier
     * claim of the same dispatch took its charge (the job fetched again after BullMQ's stalled check while its
     * first attempt still runs: that attempt settles the charge, once), so this attempt's calls are not prepaid
     * (`JobContext.prepaid` dropped: the rate-limit guard takes their requests itself); 'parked' when it was
     * parked again (throw DelayedError); 'cancelled' when the API's cancel marker is set (the claim script reads it, atomically
     * with the claim: no command of its own): the job must fail as cancelled, and is not parked even if the
     * cancel already took its slot (a lost claim is then the cancel's doing). `stage` is written to the job's
     * progress by the claim script itself when the claim holds (no extra command). `lookup`: the job's
     * result-cache lookup, run by the claim script when the job runs; its reply is `deliver`ed. `append`:
     * instead, the usage row of an attempt answered before its claim, appended by the claim script when the
     * job holds its slot and is not cancelled; `appended` is then called.
     */
    async admit(
      job: AgentJob,
      token: string | undefined,
      stage?: StoredStage,
      lookup?: ClaimLookup & { deliver(reply: unknown): void },
      append?: ClaimAppend & { appended(): void },
    ): Promise<'run' | 'run_unpaid' | 'parked' | 'cancelled'> {
      // Slots waiting to be released go with the claim: BullMQ starts the next job right after it recorded
      // the last one's outcome, so one after another every release rides on a claim.
      // A new list only when there is one to hand (most claims have none: the release rode on the previous claim).
      const handed = pending.length ? pending : undefined;
      if (handed) pending = [];
      const correct = takeCorrections();
      // A moved ask (or the registration's renewal) rides here too, instead of a dispatch call of its own.
      const register = deps.loop.takeRegistration();
      let claim;
      try {
        // Refill: the claim dispatches (and promotes) the next job while this one runs. The lookup and the row go as
        // they are (the script call reads their keys and arguments only), in one object built without spreads.
        const carried: ClaimCarried = { refill: true };
        if (handed) carried.release = handed;
        if (correct.length) carried.correct = correct;
        if (lookup) carried.lookup = lookup;
        if (append) carried.append = append;
        if (register) carried.register = register;
        claim = await deps.scheduler.claim(job.id!, stage ? JSON.stringify(stage) : undefined, carried);
      } catch (err) {
        if (register) deps.loop.registrationLost();
        // Not known to be released: released again on their own (a second release of a slot is a no-op).
        if (handed) queueRelease(...handed);
        // Not sent again, as a failed release's (whether they were applied is unknown); said, not silent.
        if (correct.length) deps.logger.warn({ err, corrections: correct.length }, 'fair: charge corrections carried by a failed claim may not be applied; the buckets refill anyway');
        throw err;
      }
      const { held, cancelled, dispatched, lookupReply, appended, chargeTaken } = claim;
      if (dispatched) deps.loop.absorb(dispatched);
      if (lookup && lookupReply !== undefined) lookup.deliver(lookupReply);
      if (append && appended) append.appended();
      // The dispatch's charge is this attempt's only when its claim came first: refunded or corrected once, by
      // one attempt. A batch lane's dispatch charged nothing: every attempt of it runs as the first (prepaid
      // nothing, its calls charged by their usage alone).
      const unpaid = held && chargeTaken === true && !isBatchLane(deps.entryOf(job).model);
      if (held && !unpaid) charged.add(job);
      if (held || cancelled || !token) running.add(job);
      if (cancelled) {
        // It never calls the model: what its dispatch charged goes back (nothing when another claim took it).
        refundUnspent(job);
        return 'cancelled';
      }
      if (unpaid) return 'run_unpaid';
      if (held || !token) return 'run';
      await parkActiveJob(job, token);
      await deps.scheduler.enqueue([deps.entryOf(job)]);
      deps.logger.debug({ jobId: job.id }, 'fair: job reached a worker without a slot; parked for the dispatcher');
      return 'parked';
    },

    /**
     * Waits a job without using an attempt (quota, open breaker, a limit only known at run time): parked and
     * back in its lane `delayMs` from now (by Redis's clock: this worker's may be off it). An open breaker or a provider 429 also pauses the model's lanes for
     * every org (`MODEL_WIDE_DELAYS`), in every queue shard: the fair dispatchers stop sending anyone's jobs into a wall.
     */
    async defer(job: AgentJob, token: string | undefined, delayMs: number, reason: string, model?: string): Promise<void> {
      running.delete(job);
      if (!token) throw new Error('cannot defer a job without its lock token');
      await parkActiveJob(job, token);
      // This attempt's job only: a repark late past the lease sweep's patience finds the job sent again, and leaves it.
      await deps.scheduler.repark(job.id!, delayMs, reason, job.attemptsStarted);
      if (model && MODEL_WIDE_DELAYS.has(reason as DelayReason)) await blockModel(model, delayMs, reason);
      void deps.loop.kick();
    },

    /**
     * BullMQ's backoff strategy for fair jobs: the retry is parked (BullMQ never promotes it by itself) and
     * re-enters its lane once the real backoff is over, so it is dispatched like any other job, never bounced.
     */
    retryDelay(job: Pick<MinimalJob, 'id'>, backoffMs: number): number {
      retries.set(job, backoffMs);
      return PARK_AT_MS - Date.now();
    },

    /**
     * Corrects what was charged for calls of `org` to `model` (see `ChargeCorrection`): a call's real token
     * usage against its charge (`JobContext.charge`), or a dispatch's charge given back. Summed per org and
     * model for `correctionBatchMs`, then sent with the next claim or release (jobs finish and start all the
     * time: no round trip of its own), or on its own once CORRECTION_MAX_DELAY_MS is over.
     */
    correct(org: string, model: string, d: { orgTokens?: number; modelTokens?: number; requests?: number }): void {
      const orgDelta = d.orgTokens ?? 0;
      const modelDelta = d.modelTokens ?? 0;
      const requests = d.requests ?? 0;
      if (orgDelta === 0 && modelDelta === 0 && requests === 0) return;
      const key = `${org}\n${model}`;
      if (corrections.size === 0) correctionsSince = Date.now();
      const c = corrections.get(key) ?? { org, model, orgDelta: 0, modelDelta: 0, requests: 0 };
      c.orgDelta += orgDelta;
      c.modelDelta += modelDelta;
      c.requests += requests;
      corrections.set(key, c);
      correctionTimer ??= setTimeout(() => {
        correctionTimer = undefined;
        forceCorrections = true;
        scheduleFlush();
      }, CORRECTION_MAX_DELAY_MS).unref();
    },

    refundUnspent,

    /**
     * The org's request for a call no dispatch charged (`JobContext.orgRequests`): taken and given back by the
     * dispatcher, at its own capacity and rate for the org's RPM bucket, so that bucket has one limit wherever
     * it is taken. Only the rate limiter's calls of that kind reach Redis through it.
     */
    orgRequests: {
      take: (orgId: string, model: string, others: BucketRequest[]) => deps.scheduler.takeRequest(orgId, model, others),
      giveBack: (orgId: string, model: string) => deps.scheduler.giveBackRequest(orgId, model),
    } satisfies OrgRequests,

    /**
     * The attempt's processor ended (the processor says so, whatever its outcome and whatever BullMQ then records):
     * it makes no claim from here on. Only forgotten: nothing is released. Its slot goes back with `finished`, once
     * BullMQ recorded the outcome; an attempt whose lock lapsed gets no such event, since the slot is the job's,
     * held now by the attempt that fetched it again (one lease, freed once, by the attempt BullMQ lets finish).
     */
    ended(job: AgentJob): void {
      running.delete(job);
    },

    /** Attempts admitted here whose processor has not ended yet (diagnostics; tests). */
    runningAttempts(): number {
      return running.size;
    },

    /**
     * The attempt's outcome is recorded by BullMQ (its completed / failed event, which hands over the attempt's Job
     * object): its slot goes back (batched per tick), or it waits for its retry. A retry's repark moves only that
     * attempt's parked job (its `attemptsStarted`). The attempt itself was forgotten already (`ended`: its processor
     * returned before BullMQ recorded this).
     */
    finished(job: Pick<AgentJob, 'id' | 'attemptsStarted'>): void {
      const jobId = job.id!;
      const attempt = job.attemptsStarted;
      const backoffMs = retries.get(job);
      if (backoffMs !== undefined) {
        retries.delete(job);
        // A crash before this repark leaves the job parked with its lease: the lease sweep lanes it again (a lease
        // after it first finds it parked, the time it gives this repark to come).
        // The backoff itself, not a time by this worker's clock: the script counts it from Redis's.
        void deps.scheduler.repark(jobId, backoffMs, 'retry_backoff', attempt).then(
          () => deps.loop.kick(),
          (err: unknown) => deps.logger.warn({ err, jobId }, 'fair: could not schedule a retry; the lease sweep will'),
        );
        return;
      }
      // Not through queueRelease: its rest parameter and spread made an array per job.
      pending.push(jobId);
      scheduleFlush();
    },

    async close(): Promise<void> {
      if (corrections.size) {
        forceCorrections = true;
        scheduleFlush();
      }
      // An armed flush has not started yet: the turn after it (immediates run in order) finds it started, if it had
      // anything to send.
      if (armed) await new Promise<void>((resolve) => setImmediate(resolve));
      await flushing;
      clearTimeout(correctionTimer);
    },
  };
  return gate;
}

export type FairGate = ReturnType<typeof createFairGate>;
