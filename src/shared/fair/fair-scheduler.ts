import type { RedisClient } from '../infra/lua.js';
import { fixedShare } from './buffer-ask.js';
import { fairKeys, type FairKeys, type QueueKeySource } from './fair-keys.js';
import { createFairLua, type ClaimAppend, type ClaimLookup, type ClaimResult, type CancelTarget, type ChargeCorrection, type FairLua, type RawDispatch, type ReleaseResult } from './fair-lua.js';
import { effectivePlan, isBatchLane, planFields, planFromHash, type FairDefaults, type FairPlan } from './fair-plan.js';
import { guardKeys } from '../core/queue-keys.js';
import { DELAY_REASONS } from '../core/outcomes.js';
import type { LeaseWant, ModelLeases } from './model-leases.js';
import type { ParkedJobFields } from './park.js';
import type { BucketRequest, TakeResult } from '../limits/token-bucket.js';

export interface FairEntry {
  jobId: string;
  orgId: string;
  model: string;
  /** BullMQ priority the job was added with (0 / missing = none; lower = sooner). */
  priority?: number;
  /** Token estimate charged to the TPM buckets at dispatch. */
  estTokens: number;
  /**
   * The job waits (as "delayed") this long (ms) before entering its lane. A delay, not a time: the script adds it
   * to Redis's clock, as repark's, so a producer whose clock is off Redis's still delays the job by the whole of it.
   */
  delayMs?: number;
  /**
   * Adds the job to its org's job index (`orgJobsKey`, ZADD NX) with this score (its enqueue time, ms) in the
   * same script call: the producer's index write at no extra round trip. Absent: the index is not touched.
   */
  indexAt?: number;
  /**
   * The BullMQ job itself, stored parked by the same script call before it is laned (one round trip and one
   * script call for a whole bulk instead of BullMQ's add per job; see includes/fair-store-parked.lua). Absent:
   * the job was added to BullMQ already.
   */
  store?: ParkedJobFields;
  /**
   * With `store`: the job's idempotency key, recorded beside the job by the same call (queue-keys.ts
   * idempotencyRecordKey) for `ttlMs`, and read first: a job gone while its record stands is not stored again.
   */
  idem?: { fingerprint: string; ttlMs: number };
}

export type WaitReason =
  | 'fair_share'
  | 'org_concurrency'
  | 'rate_limited'
  | 'model_blocked'
  | 'breaker_open'
  | 'quota'
  | 'delayed'
  | 'retry_backoff'
  | 'provider_rate_limited'
  | 'provider_quota'
  | 'waiting_for_batch'
  | 'database_unavailable';

/** Reasons a job parked with a not-before time (repark, or its own `delayMs`) is reported under. */
// Every run-time delay's reason (one list, outcomes.ts: a new reason needs no edit here), and a job's own `delayMs`.
const TIMER_REASONS = new Set<string>([...DELAY_REASONS, 'delayed']);
/** Model blocks reported under their own reason (the block's reason is what the caller needs to know). */
const BLOCK_REASONS = new Set<string>(['breaker_open', 'provider_rate_limited', 'provider_quota']);

export interface WhyResult {
  reason: WaitReason;
  /** Bucket name (e.g. `rpm:org:<org>:<model>`), block / retry reason, or `concurrency`. */
  limit?: string;
  /** Redis time (ms) at which the lane or job is due to be looked at again. */
  etaMs?: number;
  /** Place in its lane (0 = next of its org and model). */
  position?: number;
}

export interface DispatchResult {
  /** Ids promoted to BullMQ wait / prioritized by this call, in dispatch order. */
  promoted: string[];
  /** Redis time (ms) at which a timer or sleeping lane becomes due, if any. */
  nextWakeMs?: number;
  /** Redis time (ms) of the decision (compare nextWakeMs with it, not with the local clock). */
  nowMs: number;
  /** More work was left at a per-call bound: dispatch again now. */
  more: boolean;
}

export interface FairSchedulerOptions {
  /** Connection for the fair scripts (may be the queue's). */
  redis: RedisClient;
  /** Only names BullMQ's keys: the scripts promote jobs themselves, so no queue command runs through it. */
  queue: QueueKeySource;
  /** Prefix of the fair state, with the queue's hash tag, e.g. `{agentq}:fq`. */
  keyPrefix: string;
  /** Prefix of the token buckets, as given to createTokenBuckets (same hash tag). */
  bucketPrefix: string;
  defaults: FairDefaults;
  /** Global per-model limits; stored in Redis at enqueue, so any dispatching process knows them. */
  modelLimits: (model: string) => { rpm?: number; tpm?: number; orgRpm?: number };
  leaseMs: number;
  /** Dispatch until BullMQ's wait + prioritized hold this many jobs... */
  bufferTarget?: number;
  /**
   * ...or the sum of the asks of the workers alive now (each registers as it dispatches): a worker's own ask
   * (buffer-ask.ts), or this times its concurrency when it registers none.
   */
  bufferRatio?: number;
  maxBatch?: number;
  sweepMax?: number;
  /** Ids per enqueue script call laning jobs already stored (bounds the time one call blocks Redis); at most
   * MAX_ENQUEUE_CHUNK. A call that stores the jobs (a bulk request) is one script call, all or nothing. */
  enqueueChunk?: number;
  /**
   * QUEUE_SHARDS > 1: `modelLimits` are the models' global limits, held in global buckets this shard leases
   * from (model-leases.ts); the shard's own model buckets are its reservoirs.
   */
  leases?: ModelLeases;
  /** A lease that failed (its lanes ask again when their wait ends). */
  onLeaseError?: (err: unknown, model: string) => void;
  /**
   * Asks the processes with a dispatch loop (the workers') for a dispatch: the fair kick channel. Sent after a
   * call made here without a loop to take its result (a `dispatch` without `takesWake`, a lease nothing here
   * listens to, an enqueue's or a cancel's dispatch) left work or a wake-up for a loop; a lost kick leaves it to the
   * loops' safety poll. Absent: nothing is sent (the caller hands the results to a loop itself).
   */
  kick?: () => Promise<unknown>;
}

/** A worker registering as it dispatches or claims: its ask (else `concurrency` x the buffer ratio) for `ttlMs`. */
export interface DispatchingWorker {
  id: string;
  concurrency: number;
  ttlMs: number;
  ask?: number;
  /** A renewal: the same ask as the worker's last registration, which succeeded (only the expiry is written). */
  renewal?: boolean;
}

export interface FairScheduler {
  /**
   * Lanes jobs already added to BullMQ parked (see park.ts), or stores them parked first where an entry carries
   * `store`, then dispatches unless `dispatch: false`. `stored`: how many entries with `store` it stored (the
   * others' jobs existed already).
   */
  enqueue(entries: FairEntry[], opts?: { dispatch?: boolean }): Promise<DispatchResult & { skipped: string[]; stored: number }>;
  /**
   * `worker` registers the calling worker (its ask, else its concurrency, sizes the dispatch buffer) for `ttlMs`.
   * `takesWake`: the caller is a dispatch loop, which arms a timer for `nextWakeMs` (handed to it alone). Without
   * it (a process with no loop: the API after a plan change, the batch collector) the wake-up is told, not
   * taken, and when it leaves one (or stopped with `more`) the loops are asked for a dispatch (`kick`), whose
   * next call takes it: taken here and dropped, it waited for the loops' safety poll.
   */
  dispatch(worker?: DispatchingWorker, opts?: { takesWake?: boolean }): Promise<DispatchResult>;
  /**
   * `held`: the job holds a dispatcher slot (its lease is renewed, and `progress`, when given, is written to
   * the job's progress field in the same script); false: it must be parked and laned. `cancelled`: the API's
   * cancel marker for the job is set (read atomically with the claim; no progress is written then). `chargeTaken`:
   * held, but an earlier claim of the same dispatch took its charge (the job fetched again after a stall while its
   * first attempt still runs): this attempt's calls are not prepaid.
   * `refill`: a held claim dispatches in the same call when BullMQ's wait list is empty (and something is due: with no
   * active lane while a wake-up is armed, it reads no timer, sleeper or lease, which that wake-up comes for); then
   * `dispatched` is what it dispatched (promoted in the same call); the caller must hand it to its dispatch
   * loop: it may carry the one armed wake-up time. `release`: finished
   * jobs whose slots the same call frees first (then it dispatches when due, as `release` with `dispatch`).
   * `lookup`: the job's result-cache lookup, done in the same call when the claim holds and is not cancelled
   * (`lookupReply`), so the miss that follows costs no round trip of its own. `correct`: charge corrections
   * applied first, in the same call (as `release`'s). `append`: the usage row of an attempt answered before its
   * claim (an L1 hit), appended in the same call when the claim holds and is not cancelled (`appended`).
   * `register`: the calling worker's registration, as `dispatch`'s `worker`, done first in the same call.
   */
  claim(jobId: string, progress?: string, opts?: { refill?: boolean; release?: string[]; lookup?: ClaimLookup; correct?: ChargeCorrection[]; append?: ClaimAppend; register?: DispatchingWorker }): Promise<ClaimResult & { dispatched?: DispatchResult; lookupReply?: unknown; appended?: boolean }>;
  /** Parked jobs the dispatcher does not know (see `orphans` in fair-core-N.lua). */
  orphans(offset: number, count: number): Promise<{ ids: string[]; scanned: number }>;
  /**
   * Frees the jobs' slots; `due` says whether a dispatch now has anything to do, so a caller skips the
   * dispatch when nothing does (e.g. the only lane sleeps on a rate limit: its armed wake-up comes back).
   * With `dispatch: true` that dispatch (promotion included) runs in the same script call; `dispatched` is its result.
   * `correct`: charge corrections (`ChargeCorrection`: finished calls' real token usage against the estimate
   * their dispatch charged, requests given back or charged), applied to the org's and the model's buckets
   * first, in the same call. `sweep: false` (with `dispatch`): the caller's process swept the timers, sleepers and
   * leases lately (`DispatchLoop.sweepDue`), so they are not read: only an active lane makes the dispatch due.
   */
  release(jobIds: string[], opts?: { dispatch?: boolean; sweep?: boolean; correct?: ChargeCorrection[] }): Promise<ReleaseResult & { dispatched?: DispatchResult }>;
  /**
   * Frees the slot of a parked job and puts it on a timer for `delayMs` from now (`reason`: what `why` reports), or
   * in its lane when that is 0 or less. The delay, not a time: the script adds it to Redis's clock, so a worker
   * whose own clock is off Redis's still waits the whole backoff. `attempt`: the attempt that parked it (BullMQ's `attemptsStarted`, as its
   * worker saw it), for a retry's or a deferral's repark: the job is moved only while it is parked by that attempt,
   * never once the dispatcher has sent it again (a repark late past a lease, see the lease sweep) or a later
   * attempt parked it. Without: only a job waiting in its lane or on its timer is moved (the batch tier's wake),
   * never a running one nor the slot of an attempt between its park and its own repark. False when nothing was
   * moved (also when the job is unknown to the dispatcher).
   */
  repark(jobId: string, delayMs: number, reason: string, attempt?: number): Promise<boolean>;
  /**
   * An operator's promote of a job (Bull Board's): one the dispatcher holds on a timer (its delay, a retry's backoff,
   * a run-time deferral) is due now, laned as its timer would lane it, and dispatched in the same script call as far
   * as its org's fair share, concurrency cap and rate limits allow (never past them: otherwise it waits in its lane
   * for them); the loops are asked for what that dispatch leaves them (`kick`). Where the job was: 'timer' (made
   * due), 'lane' or 'lease' (due already: laned, or dispatched), 'unknown' (the dispatcher does not hold it).
   */
  promote(jobId: string): Promise<'timer' | 'lane' | 'lease' | 'unknown'>;
  /**
   * An operator's promote of every job (Bull Board's "promote all"): each job the dispatcher holds on a timer of this
   * queue shard is due now, laned as `promote` lanes it, in script calls of PROMOTE_CHUNK ids at most (the timers,
   * read by ZSCAN pages: every job on a timer when the call starts and still on it is taken, however many there
   * are); then one dispatch, so every org's jobs are in their lanes before any is chosen, and each org gets what
   * its fair share, concurrency cap and rate limits allow (the others wait in their lanes). The loops are asked for
   * what that dispatch leaves them (`kick`). How many jobs it made due.
   */
  promoteAll(): Promise<number>;
  /**
   * Takes a job out of its lane or timer, or gives back the slot (and what its dispatch charged) of one
   * dispatched but not fetched: it still waits in BullMQ's wait list or prioritized set, unlocked. A job a worker
   * fetched, running or ended, is left to that worker's release. False when there was nothing to take. Capacity
   * given back (the slot, the charge, a sleeping lane's head) is dispatched in the same script call, as a release's:
   * the org's next job goes at once, the job given back counted out of BullMQ's wait list, since the caller removes
   * it next (the API's cancel, Bull Board's remove). A wake-up that dispatch leaves goes to the loops (`kick`).
   * `jobTs`: the creation time of the job the caller read (the API's cancel): only that job is taken, never one
   * made under its id since (its removal and a re-send of its idempotency key between the read and this call).
   */
  cancel(jobId: string, jobTs?: number): Promise<boolean>;
  /**
   * `cancel` of each job, in one script call (the jobs of one removal: a parent's children, at most a flow's
   * tasks). `whole`: they are jobs one removal takes together (BullMQ's remove of their parent, which it refuses
   * while a worker holds any of them): then none is taken when one is locked. A job given with its creation time
   * is taken only while it is the job under its id, as `cancel`'s `jobTs`, and a new job under its id, locked, stops
   * none of the others (it is no job of that removal). How many it took out.
   */
  cancelMany(jobs: CancelTarget[], opts?: { whole?: boolean }): Promise<number>;
  /**
   * Jobs BullMQ removed without the dispatcher (Bull Board's remove, clean, empty, obliterate; a parent's
   * removal takes its children): each whose BullMQ job is gone leaves its lane or timer, or gives its slot back
   * now (not at the lease sweep), and is forgotten. `refund`: the removal took them from BullMQ's wait list or
   * prioritized set, so none was fetched: what their dispatch charged goes back too. Without ids: every job
   * holding a slot is looked at (for a removal that does not say which jobs it took). A slot freed is dispatched in
   * the same script call, as a cancel's (the org's next job goes at once; a wake-up it leaves goes to the loops).
   */
  removed(jobIds?: string[], opts?: { refund?: boolean }): Promise<{ freed: number; forgotten: number }>;
  /**
   * Pauses every org's lanes of the model for `delayMs` from now (by Redis's clock, as repark's), for `reason`. A
   * block standing until later stays, its reason with it (a per-day quota's is not shortened by a per-minute 429);
   * a delay of 0 or less changes nothing: a block lapses at its own time.
   */
  blockModel(model: string, delayMs: number, reason: string): Promise<void>;
  /**
   * The request of a call of `org` to `model` that no dispatch charged (a worker's fallback model, a retry within
   * its route), taken from the org's RPM bucket for the model at the capacity and rate the dispatches take it at
   * (the org's plan, then the model's per-org rpm, then the default for its tier: the script's one resolution), with
   * `others` (buckets under this dispatcher's bucket prefix, at their own capacity: the model's, with one queue
   * shard) all or none, in one script call. Refused: nothing taken; `limitedBy` names the bucket that waits longest.
   */
  takeRequest(org: string, model: string, others?: BucketRequest[]): Promise<TakeResult>;
  /** Gives back the org's request `takeRequest` took (its call was refused before it was sent); not `others`. */
  giveBackRequest(org: string, model: string): Promise<void>;
  /** Replaces the org's whole plan (absent fields = defaults); applies at the next dispatch. */
  setPlan(org: string, plan: FairPlan): Promise<void>;
  /**
   * Re-examines the org's sleeping and cap-blocked lanes at the next dispatch, e.g. after a TPM refund with
   * token-bucket adjust(): a sleeping lane otherwise waits for the wake time its bucket math gave it.
   */
  wakeOrg(org: string): Promise<void>;
  getPlan(org: string): Promise<FairPlan>;
  why(jobId: string): Promise<WhyResult | null>;
  orgStats(org: string): Promise<{ waiting: number; backoff: number; inFlight: number; vt: number; plan: ReturnType<typeof effectivePlan> }>;
  /** Per-org waiting / in-flight / throttled seconds for metrics (orgs with work, at most `limit`). */
  gauges(limit?: number): Promise<Array<{ org: string; waiting: number; inFlight: number; throttledS: number }>>;
  /**
   * Dispatches the scheduler made by itself (after a lease from the global buckets): a dispatch loop takes
   * them in (`absorb`) for the wake-up they may carry. Returns the unsubscribe. With no listener the lease's
   * wake-up is told, not taken, and the loops are asked for a dispatch (`kick`), as `dispatch` without `takesWake`.
   */
  onDispatched(listener: (r: DispatchResult) => void): () => void;
  /** Low-level access for tests and tools: the scripts' raw answers, and the key set. */
  raw: FairLua;
  keys: FairKeys;
}

const WAIT_REASONS = new Set<string>(['fair_share', 'org_concurrency', 'rate_limited', 'model_blocked', 'retry_backoff']);

/** Script arguments per enqueued job (fair-core-N.lua's enqueue op; one it also stores, op add, carries 8 more). */
const ENTRY_ARGS = 10;
/** Ids per `removed` script call. */
const REMOVED_CHUNK = 500;
/** Ids per `promote` script call of a promote-all (bounds the time one call holds Redis: a shard may hold 10^5 timers). */
const PROMOTE_CHUNK = 500;
/** The most jobs one enqueue call takes: its ZADDs unpack two values per job, and Redis's Lua unpacks 8000 at most. */
const MAX_ENQUEUE_CHUNK = 2000;

export function createFairScheduler(opts: FairSchedulerOptions): FairScheduler {
  const keys = fairKeys({ keyPrefix: opts.keyPrefix, bucketPrefix: opts.bucketPrefix, queue: opts.queue });
  const raw = createFairLua(opts.redis, keys, {
    leased: opts.leases !== undefined,
    defaults: opts.defaults,
    leaseMs: opts.leaseMs,
    bufferTarget: opts.bufferRatio !== undefined ? 'w' : (opts.bufferTarget ?? 0),
    maxBatch: opts.maxBatch ?? 500,
    sweepMax: opts.sweepMax ?? 100,
  });
  const chunk = Math.min(opts.enqueueChunk ?? 500, MAX_ENQUEUE_CHUNK);
  const bucketKeyPrefix = guardKeys.tokenBucket(opts.bucketPrefix, '');

  const listeners = new Set<(r: DispatchResult) => void>();
  // One lease per model at a time in this process (the script also lets one request per shard stand).
  const leasing = new Set<string>();
  const lease = async (want: LeaseWant) => {
    if (!opts.leases || leasing.has(want.model)) return;
    leasing.add(want.model);
    let leased: RawDispatch | undefined;
    // A loop here takes the lease's dispatch in (onDispatched): it takes the wake-up. Else (an API or producer
    // process) it is told, and the loops asked for it below.
    const looped = listeners.size > 0;
    try {
      const grant = await opts.leases.take(want);
      leased = await raw.lease(want.model, grant.requests, grant.tokens, grant.retryAtMs ?? 0, looped);
    } catch (err) {
      opts.onLeaseError?.(err, want.model);
    } finally {
      leasing.delete(want.model);
    }
    // After the delete: the lease's own dispatch may already want the next one.
    if (leased) {
      const d = finish(leased);
      if (looped) for (const l of listeners) l(d);
      else await handOver(d);
    }
  };

  // A result no loop here takes in: what it left for a loop (a wake-up told, not taken; work left at the call's
  // bound) goes to the workers' loops.
  const handOver = async (d: DispatchResult) => {
    if (d.nextWakeMs !== undefined || d.more) await opts.kick?.().catch(() => undefined);
  };

  // The script promoted the ids it returns (fair-core-N.lua `promoteParked`): what is left is to lease for the
  // lanes that now wait on their shard's reservoir, without holding up the caller.
  const registration = (w?: DispatchingWorker) =>
    w && { id: w.id, ask: w.ask ?? fixedShare(opts.bufferRatio ?? 0, w.concurrency), ttlMs: w.ttlMs, ...(w.renewal ? { renewal: true } : {}) };
  const finish = (r: RawDispatch): DispatchResult => {
    for (const w of r.wants) void lease(w);
    return {
      promoted: r.ids,
      nowMs: r.nowMs,
      more: r.more,
      ...(r.nextWakeMs !== undefined ? { nextWakeMs: r.nextWakeMs } : {}),
    };
  };

  // Capacity a cancel gives back is dispatched in its own script call, as a release's is (no loop here takes its
  // wake-up: what it leaves goes to the loops).
  const cancelMany = async (jobs: CancelTarget[], copts: { whole?: boolean } = {}) => {
    const r = await raw.cancel(jobs, copts.whole === true);
    if (r.dispatch) await handOver(finish(r.dispatch));
    return r.taken;
  };

  return {
    raw,
    keys,
    onDispatched(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    async enqueue(entries, eopts = {}) {
      const limitsByModel = new Map<string, { rpm: number | ''; tpm: number | ''; orgRpm: number | '' }>();
      /** ENTRY_ARGS (8 more when storing) script arguments per entry, one flat array (no array per entry). */
      const args: Array<string | number> = [];
      const store = entries.some((e) => e.store);
      for (const e of entries) {
        if (e.model.includes('|')) throw new RangeError(`model name must not contain '|': ${e.model}`);
        const p = e.priority ?? 0;
        if (!Number.isInteger(p) || p < 0 || p > 2 ** 21) throw new RangeError(`priority must be an integer in [0, 2^21], got ${p}`);
        if (!(e.estTokens >= 0) || !Number.isFinite(e.estTokens)) throw new RangeError(`estTokens must be >= 0, got ${e.estTokens}`);
        let lim = limitsByModel.get(e.model);
        if (!lim) {
          // A batch lane has no online limits to store (see isBatchLane).
          const l = isBatchLane(e.model) ? {} : opts.modelLimits(e.model);
          lim = { rpm: l.rpm ?? '', tpm: l.tpm ?? '', orgRpm: l.orgRpm ?? '' };
          limitsByModel.set(e.model, lim);
        }
        args.push(e.jobId, e.orgId, e.model, p, e.estTokens, lim.rpm, lim.tpm, Math.ceil(e.delayMs ?? 0), lim.orgRpm, e.indexAt ?? '');
        if (store) {
          const f = e.store;
          if (f) args.push(f.name, f.data, f.opts, f.timestamp, f.delay, f.priority);
          else args.push('', '', '', '', '', '');
          if (f && e.idem) args.push(e.idem.fingerprint, Math.max(1, Math.ceil(e.idem.ttlMs)));
          else args.push('', '');
        }
      }
      const skipped: string[] = [];
      let last: RawDispatch | undefined;
      // Jobs stored by this call (a bulk request's) go in one script call, so the request is all or nothing: a
      // second chunk failing after the first was stored would answer an error for jobs that run anyway. Its size
      // is bounded by the request's (bulkRequestSchema: 1,000) and checked here.
      if (store && entries.length > MAX_ENQUEUE_CHUNK) throw new RangeError(`at most ${MAX_ENQUEUE_CHUNK} jobs are stored by one call, got ${entries.length}`);
      const step = store ? args.length : chunk * ENTRY_ARGS;
      for (let i = 0; i < args.length || last === undefined; i += step) {
        // Only the last chunk dispatches: one script call per chunk, one dispatch for the batch.
        const isLast = i + step >= args.length;
        const r = await raw.enqueue(args.slice(i, i + step), isLast && eopts.dispatch !== false, store);
        skipped.push(...r.skipped);
        if (isLast) last = r;
      }
      const d = finish(last);
      // An enqueue never takes the wake-up its dispatch leaves (enqueue is told, not taken): the loops are asked
      // for it, whoever enqueued (the API, a worker's fair gate parking a job without a slot, the orphan sweep).
      if (eopts.dispatch !== false) await handOver(d);
      // Not `{ ...d, skipped, stored }`: V8's slow path for properties added after a leading spread (job-producer.ts).
      return Object.assign({}, d, { skipped, stored: last.stored ?? 0 });
    },
    async dispatch(worker, dopts = {}) {
      const takesWake = dopts.takesWake === true;
      const d = finish(await raw.dispatch(undefined, registration(worker), takesWake));
      if (!takesWake) await handOver(d);
      return d;
    },
    async claim(id, progress, copts = {}) {
      const r = await raw.claim(id, {
        progress,
        refill: copts.refill,
        release: copts.release,
        lookup: copts.lookup,
        correct: copts.correct,
        append: copts.append,
        register: registration(copts.register),
      });
      if (!r.dispatch) return r;
      // Handed on as `dispatched`, once finished; a claim that dispatched nothing (most) is handed on as it came.
      const { dispatch, ...rest } = r;
      return { ...rest, dispatched: finish(dispatch) };
    },
    gauges: (limit = 1000) => raw.gauges(limit),
    orphans: (offset, count) => raw.orphans(offset, count),
    async release(ids, ropts = {}) {
      const { dispatch, ...r } = await raw.release(ids, ropts.dispatch === true, ropts.correct, ropts.sweep !== false);
      return dispatch ? { ...r, dispatched: finish(dispatch) } : r;
    },
    repark: (id, delayMs, reason, attempt) => raw.repark(id, delayMs, reason, attempt),
    async promote(id) {
      const { stages: [stage], dispatch } = await raw.promote([id], true);
      // Told, not taken, as an enqueue's dispatch: a wake-up it leaves (the lane asleep on a rate limit) goes to the loops.
      if (dispatch) await handOver(finish(dispatch));
      return stage === 'timer' || stage === 'lane' || stage === 'lease' ? stage : 'unknown';
    },
    async promoteAll() {
      let made = 0;
      // ZSCAN, not one ZRANGE of the whole set, nor a script that pops the timers until none is left: each read and
      // each call is bounded, and the walk ends however many timers are added meanwhile (a retry's job made due
      // here, run and put on a timer again may be taken again; new timers never keep it going). A job read twice,
      // or no longer on its timer when its call comes, is left as it is.
      let cursor = '0';
      do {
        const [next, flat] = await opts.redis.zscan(keys.named.timers, cursor, 'COUNT', PROMOTE_CHUNK);
        cursor = next;
        const ids = flat.filter((_, i) => i % 2 === 0);
        for (let i = 0; i < ids.length; i += PROMOTE_CHUNK) {
          const { stages } = await raw.promote(ids.slice(i, i + PROMOTE_CHUNK), false);
          made += stages.filter((st) => st === 'timer').length;
        }
      } while (cursor !== '0');
      // One dispatch for them all (told, not taken, as promote's): dispatched chunk by chunk, the first chunk's orgs
      // would take the buffer before the others' jobs were laned.
      if (made > 0) await handOver(finish(await raw.dispatch()));
      return made;
    },
    cancel: async (id, jobTs) => (await cancelMany([jobTs === undefined ? id : { id, ts: jobTs }])) > 0,
    cancelMany,
    async removed(ids, ropts = {}) {
      const all = ids ?? (await opts.redis.zrange(keys.leases, 0, -1));
      const total = { freed: 0, forgotten: 0 };
      // Bounded calls: one script call holds Redis for its ids (a clean may name thousands).
      for (let i = 0; i < all.length; i += REMOVED_CHUNK) {
        const r = await raw.removed(all.slice(i, i + REMOVED_CHUNK), ropts.refund === true);
        if (r.dispatch) await handOver(finish(r.dispatch));
        total.freed += r.freed;
        total.forgotten += r.forgotten;
      }
      return total;
    },
    blockModel: (model, delayMs, reason) => raw.block(model, delayMs, reason),
    async takeRequest(org, model, others = []) {
      for (const o of others) {
        if (!(o.capacity > 0) || !Number.isFinite(o.capacity) || !(o.refillPerSec > 0) || !Number.isFinite(o.refillPerSec)) {
          throw new RangeError(`bucket ${o.key}: capacity and refillPerSec must be > 0, got ${o.capacity}, ${o.refillPerSec}`);
        }
        if (!(o.cost >= 0) || !Number.isFinite(o.cost)) throw new RangeError(`bucket ${o.key}: cost must be >= 0, got ${o.cost}`);
      }
      const r = await raw.take(org, model, opts.modelLimits(model).orgRpm, others.map((o) => ({ name: o.key, capacity: o.capacity, refillPerMs: o.refillPerSec / 1000, cost: o.cost })));
      return { allowed: r.allowed, msBeforeNext: r.msBeforeNext, redisTimeMs: r.nowMs, ...(r.allowed ? {} : { limitedBy: r.limitedBy }) };
    },
    giveBackRequest: (org, model) => raw.giveBack(org, model, opts.modelLimits(model).orgRpm),
    wakeOrg: (org) => raw.wake(org),
    async setPlan(org, plan) {
      await raw.plan(org, planFields(plan));
    },
    async getPlan(org) {
      return planFromHash(await opts.redis.hgetall(keys.plan(org)));
    },
    async why(id) {
      const r = await raw.why(id);
      if (!r || !WAIT_REASONS.has(r.reason)) return null;
      let reason = r.reason as WaitReason;
      let limit = r.limit;
      if (reason === 'rate_limited' && limit.startsWith('model:')) reason = 'model_blocked';
      if (reason === 'model_blocked' && BLOCK_REASONS.has(limit)) reason = limit as WaitReason;
      if (reason === 'retry_backoff' && TIMER_REASONS.has(limit)) {
        reason = limit as WaitReason;
        limit = '';
      }
      if (limit.startsWith(bucketKeyPrefix)) limit = limit.slice(bucketKeyPrefix.length);
      return {
        reason,
        ...(limit ? { limit } : {}),
        ...(r.etaMs > 0 ? { etaMs: r.etaMs } : {}),
        ...(r.position >= 0 ? { position: r.position } : {}),
      };
    },
    async orgStats(org) {
      const s = await raw.stats(org);
      return { waiting: s.waiting, backoff: s.backoff, inFlight: s.inFlight, vt: s.vt, plan: effectivePlan(planFromHash(s.plan), opts.defaults) };
    },
  };
}
