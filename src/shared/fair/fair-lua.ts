import { defineLua, type RedisClient } from '../infra/lua.js';
import type { FairKeys } from './fair-keys.js';
import { PARK_SCORE_MIN } from './park.js';
import type { FairDefaults } from './fair-plan.js';
import type { LeaseWant } from './model-leases.js';

export interface FairLuaConfig {
  defaults: FairDefaults;
  leaseMs: number;
  /** Jobs kept in BullMQ's wait list: a number, or `w`: the sum of the live workers' registered asks. */
  bufferTarget: number | 'w';
  /** Most jobs one dispatch call hands out (bounds the script's run time). */
  maxBatch: number;
  /** Most due timers, sleepers and expired leases each handled per dispatch call. */
  sweepMax: number;
  /** The model buckets are this shard's reservoirs, leased from the global buckets (model-leases.ts). */
  leased?: boolean;
}

/** Op take's answer: allowed, or the wait until the bucket `limitedBy` (its name under the buckets' prefix) has room. */
export interface RawTake {
  allowed: boolean;
  msBeforeNext: number;
  limitedBy: string;
  /** Redis time (ms) of the decision. */
  nowMs: number;
}

/** What one dispatch script call decided: `ids` it moved to BullMQ's wait / prioritized, in dispatch order. */
export interface RawDispatch {
  ids: string[];
  /** Redis time (ms) of the earliest timer or sleeping lane, if any. */
  nextWakeMs?: number;
  /** Redis time (ms) of the decision. */
  nowMs: number;
  /** True when the call stopped at its batch / scan bound with work left: call again at once. */
  more: boolean;
  /** Ids enqueue refused because their BullMQ job is not parked. */
  skipped: string[];
  /** Op `add`: how many of its jobs it stored (the others existed already). */
  stored?: number;
  /** Leased mode: models whose reservoir lanes now sleep on; the caller leases for them (op lease). */
  wants: LeaseWant[];
}

/** Slots a release freed, and whether a dispatch now would find anything to do. */
export interface ReleaseResult {
  freed: number;
  due: boolean;
}

/**
 * A job a cancel takes out: its id (whichever job holds it), or the id and the creation time (BullMQ's `timestamp`)
 * of the job the caller read, so a job made under the id since is left alone.
 */
export type CancelTarget = string | { id: string; ts: number };

/** A claim's answer: whether the job holds its slot, and whether the API asked to cancel it (its marker). */
export interface ClaimResult {
  held: boolean;
  cancelled: boolean;
  /**
   * Held, but an earlier claim of the same dispatch took its charge (present only then): the job was fetched again
   * after BullMQ's stalled check while its first attempt still runs. That attempt settles the charge; this one's
   * calls are not prepaid.
   */
  chargeTaken?: true;
}

/**
 * A result-cache lookup carried by a claim (`ResultCache.prepare`): its 5 keys and 4 arguments, as
 * result-cache-lookup-5.lua takes them. The claim runs it only when the job holds its slot and is not cancelled.
 */
export interface ClaimLookup {
  keys: readonly string[];
  args: Array<string | number>;
}

/**
 * An attempt's usage row carried by its claim (an attempt answered before it, from memory): appended to the
 * usage stream `key` (same hash tag) only when the job holds its slot and is not cancelled. Not with a lookup.
 */
export interface ClaimAppend {
  key: string;
  field: string;
  entry: string;
}

/**
 * What calls really used against what their dispatch charged, for one org and model: `orgDelta` tokens go to
 * the org's TPM bucket for the model, `modelDelta` tokens to the model's, and `requests` to both RPM buckets
 * (-1 gives back the request charged for a job that called no model). Each only where that limit is set.
 * Positive charges more, negative refunds; a refund also wakes the org's lanes asleep on that bucket.
 */
export interface ChargeCorrection {
  org: string;
  model: string;
  orgDelta: number;
  modelDelta: number;
  requests: number;
}

/** What a claim carries besides the job's id (fair-core-N.lua, op claim). */
export interface ClaimOptions {
  /** JSON written to the job hash's progress field when the claim holds and the job is not cancelled (its stage). */
  progress?: string;
  /** A held claim also dispatches when BullMQ's wait list is empty. */
  refill?: boolean;
  /** Slots of finished jobs freed first, in the same call, which then dispatches when due (as `release(ids, true)`). */
  release?: string[];
  /**
   * The job's result-cache lookup, run by the same script when the claim holds and is not cancelled;
   * `lookupReply` is then its reply (as result-cache-lookup-5.lua's).
   */
  lookup?: ClaimLookup;
  /** Charge corrections, applied first, in the same call. */
  correct?: ChargeCorrection[];
  /** Instead of a lookup, the usage row of an attempt already answered, appended when the claim holds and is not cancelled (`appended`). */
  append?: ClaimAppend;
  /** The calling worker's registration (as dispatch's `worker`), done first: a moved ask costs no call of its own. */
  register?: WorkerRegistration;
}

/** A dispatching worker's registration: its ask (jobs of BullMQ's wait list it wants kept) for `ttlMs`. */
export interface WorkerRegistration {
  id: string;
  ask: number;
  ttlMs: number;
  /**
   * The same ask as this worker's last registration, which succeeded: only its expiry is moved while the registry
   * still holds the worker (the ask is written again when it was swept meanwhile). Sent as '=<ask>'.
   */
  renewal?: boolean;
}

/** The ask as the script reads it: '=<ask>' for a renewal (fair-core-N.lua, the claim's registration). */
const askArg = (w: WorkerRegistration, ask: number | string = w.ask) => (w.renewal ? `=${ask}` : ask);

const flatCorrections = (c: ChargeCorrection[] = []) => [c.length, ...c.flatMap((x) => [x.org, x.model, x.orgDelta, x.modelDelta, x.requests])];

/** What a claim or release that also dispatched decided (its ids already promoted in BullMQ). */
export interface WithDispatch {
  dispatch?: RawDispatch;
}

export interface WhyRaw {
  reason: string;
  limit: string;
  etaMs: number;
  position: number;
}

/** The fair scripts bound to one client, key set and config: the low-level layer under the scheduler. */
export function createFairLua(redis: RedisClient, keys: FairKeys, cfg: FairLuaConfig) {
  const core = defineLua(redis, 'fair-core-N.lua');
  const why = defineLua(redis, 'fair-why-N.lua');
  const stats = defineLua(redis, 'fair-stats-N.lua');
  const gauges = defineLua(redis, 'fair-gauges-N.lua');
  const d = cfg.defaults;
  /**
   * ARGV 2-4 of every call, the same each time, made once as strings: the lease ms, the buffer target, and the rest
   * of the configuration in one space-separated argument (only the script's long way reads it: Redis parses each
   * argument of every call, and nine of their own cost the common claim ~1,000 Redis instructions each).
   */
  const rest = (maxBatch: number) => [d.weight, d.concurrency, d.rpm.pro, d.rpm.flash, d.tpm, PARK_SCORE_MIN, maxBatch, cfg.sweepMax, cfg.leased ? 1 : 0].join(' ');
  const head: string[] = [String(cfg.leaseMs), String(cfg.bufferTarget), rest(cfg.maxBatch)];
  /** ARGV 1-4 of a claim, the same every call: each claim copies them (one `slice`). */
  const claimHead: string[] = ['claim', ...head];
  const call = (op: string, args: Array<string | number>, maxBatch = cfg.maxBatch, extraKeys: readonly string[] = []) => {
    const argv: Array<string | number> = maxBatch < cfg.maxBatch ? [op, head[0], head[1], rest(maxBatch)] : [op, ...head];
    for (const a of args) argv.push(a);
    return core(extraKeys.length ? keys.script.concat(extraKeys) : keys.script, argv);
  };
  const toDispatch = (r: unknown): RawDispatch => {
    const [ids, wake, now, more, skipped, flatWants = [], stored] = r as [string[], string, number, number, string[], string[]?, number?];
    const w = Number(wake);
    const wants: LeaseWant[] = [];
    for (let i = 0; i + 2 < flatWants.length; i += 3) wants.push({ model: flatWants[i], requests: Number(flatWants[i + 1]), tokens: Number(flatWants[i + 2]) });
    return { ids, nowMs: now, more: more === 1, skipped, wants, ...(w > 0 ? { nextWakeMs: w } : {}), ...(stored !== undefined ? { stored } : {}) };
  };
  return {
    /**
     * `maxJobs` lowers this call's batch bound (tests use it to take exactly n decisions). `takesWake`: the caller
     * arms a timer for the wake-up it is handed (a dispatch loop), so no other caller is handed it; otherwise
     * `nextWakeMs` is told, not taken, and a dispatch loop's next call takes it.
     */
    async dispatch(maxJobs?: number, worker?: WorkerRegistration, takesWake = false): Promise<RawDispatch> {
      const registration = worker ? [worker.id, askArg(worker), worker.ttlMs] : ['', '', ''];
      return toDispatch(await call('dispatch', [...registration, takesWake ? 1 : 0], maxJobs));
    },
    /**
     * entries flattened as id, org, model, priority, est, model rpm, model tpm, not-before ms (0 = now), org rpm,
     * index score ('' = none); with `store`, each followed by its BullMQ job fields (ParkedJobFields order, name
     * '' = not stored) and its idempotency record (fingerprint, '' = none, and ttl ms): the script stores the new
     * jobs parked before laning them (op `add`).
     */
    async enqueue(flat: Array<string | number>, thenDispatch: boolean, store = false): Promise<RawDispatch> {
      return toDispatch(await call(store ? 'add' : 'enqueue', [thenDispatch ? 1 : 0, ...flat]));
    },
    /** `due`: a dispatch now has something to do (an active lane, or a timer, sleeper or lease due). */
    /** `corrections` are applied first, in the same call. */
    /** `sweep` false: only an active lane makes a dispatch due (the timers, sleepers and leases are not read). */
    async release(ids: string[], thenDispatch = false, corrections: ChargeCorrection[] = [], sweep = true): Promise<ReleaseResult & WithDispatch> {
      if (ids.length === 0 && corrections.length === 0) return { freed: 0, due: false };
      const mode = !thenDispatch ? 0 : sweep ? 1 : 2;
      const [freed, due, d] = (await call('release', [mode, ...flatCorrections(corrections), ...ids])) as [number, number, unknown?];
      return { freed, due: due === 1, ...(d ? { dispatch: toDispatch(d) } : {}) };
    },
    /** See FairScheduler.repark. */
    async repark(id: string, delayMs: number, reason: string, attempt?: number): Promise<boolean> {
      return (await call('repark', [id, Math.ceil(delayMs), reason, attempt ?? ''])) === 1;
    },
    /**
     * See FairScheduler.promote and promoteAll: one script call for these ids. `stages`: where each job was, in the
     * ids' order ('timer': made due now; '' when the dispatcher does not know it); `dispatch`: the call's dispatch
     * (with `thenDispatch`, when it made a job due).
     */
    async promote(ids: string[], thenDispatch: boolean): Promise<{ stages: string[]; dispatch?: RawDispatch }> {
      const [stages, d] = (await call('promote', [thenDispatch ? 1 : 0, ...ids])) as [string[], unknown];
      return { stages, ...(d ? { dispatch: toDispatch(d) } : {}) };
    },
    /**
     * One script call for these ids. `taken`: how many were taken out; `due`: capacity given back (a slot, a refund, a
     * sleeping lane's head) left a dispatch work, which ran in the same call (`dispatch`), the jobs given back counted
     * out of BullMQ's wait list (the caller removes them). `whole`: the ids are jobs one removal takes together: none
     * is taken when any is locked. A job given with its creation time (`ts`, as read) is taken only while it is the
     * job under its id (not one made under the id since).
     */
    async cancel(jobs: CancelTarget[], whole = false): Promise<{ taken: number; due: boolean } & WithDispatch> {
      if (jobs.length === 0) return { taken: 0, due: false };
      const args: Array<string | number> = [whole ? 1 : 0];
      for (const j of jobs) args.push(...(typeof j === 'string' ? [j, ''] : [j.id, j.ts]));
      const [taken, due, d] = (await call('cancel', args)) as [number, number, unknown?];
      return { taken, due: due === 1, ...(d ? { dispatch: toDispatch(d) } : {}) };
    },
    /** See FairScheduler.removed: one script call for these ids, which dispatches when it freed a slot and a dispatch had work. */
    async removed(ids: string[], refund: boolean): Promise<{ freed: number; forgotten: number } & WithDispatch> {
      const [freed, forgotten, d] = (await call('removed', [refund ? 1 : 0, ...ids])) as [number, number, unknown?];
      return { freed, forgotten, ...(d ? { dispatch: toDispatch(d) } : {}) };
    },
    /** See ClaimOptions; the cancel marker is read in the same script: one atomic round trip. */
    async claim(id: string, o: ClaimOptions = {}): Promise<ClaimResult & WithDispatch & { lookupReply?: unknown; appended?: boolean }> {
      const { lookup, append, register } = o;
      if (lookup && append) throw new Error('a claim carries a result-cache lookup or a usage row, not both');
      // Built in one array, as `call` builds it (one a job: no arrays of parts spread into it, no copy of them).
      // The per-call numbers sent as the strings ioredis would make of them (its `toArg` is `String`).
      const argv: Array<string | number> = claimHead.slice();
      argv.push(id, o.progress ?? '', o.refill ? '1' : '0', register ? `${askArg(register, Math.ceil(register.ask))} ${Math.ceil(register.ttlMs)} ${register.id}` : '');
      // ARGV 9-12: the lookup's arguments, or the row's field and entry (then two unused), or none.
      if (lookup) for (const a of lookup.args) argv.push(a);
      else if (append) argv.push(append.field, append.entry, '', '');
      else argv.push('', '', '0', '');
      const correct = o.correct ?? [];
      // The count as a string: the script compares it with '0' (fair-core-N.lua, claimUncorrected).
      argv.push(String(correct.length));
      for (const c of correct) argv.push(c.org, c.model, c.orgDelta, c.modelDelta, c.requests);
      if (o.release) for (const r of o.release) argv.push(r);
      const extraKeys = lookup?.keys ?? (append ? [append.key] : undefined);
      const [held, cancelled, d, reply] = (await core(extraKeys ? keys.script.concat(extraKeys) : keys.script, argv)) as [number, number, unknown, unknown?];
      // 2: held, its dispatch's charge taken by an earlier claim (fair-claim.lua claimOwn).
      const out: ClaimResult & WithDispatch & { lookupReply?: unknown; appended?: boolean } = { held: held === 1 || held === 2, cancelled: cancelled === 1 };
      if (held === 2) out.chargeTaken = true;
      if (d) out.dispatch = toDispatch(d);
      if (lookup && reply !== undefined) out.lookupReply = reply;
      if (append && reply === 1) out.appended = true;
      return out;
    },
    /** Parked jobs (from `offset` among them, `count` at most) the dispatcher does not know; `scanned` read. */
    async orphans(offset: number, count: number): Promise<{ ids: string[]; scanned: number }> {
      const [ids, scanned] = (await call('orphans', [offset, count])) as [string[], number];
      return { ids, scanned };
    },
    async plan(org: string, fields: string[]): Promise<void> {
      await call('plan', [org, ...fields]);
    },
    async wake(org: string): Promise<void> {
      await call('wake', [org]);
    },
    /**
     * Puts what was leased from the model's global buckets into this shard's reservoirs and dispatches to the
     * lanes that waited for it; nothing granted: they sleep until `retryAtMs` (Redis time). `takesWake`: as dispatch's.
     */
    async lease(model: string, requests: number, tokens: number, retryAtMs = 0, takesWake = false): Promise<RawDispatch> {
      return toDispatch(await call('lease', [model, requests, tokens, Math.ceil(retryAtMs), takesWake ? 1 : 0]));
    },
    /**
     * Op take: a request of `org` for `model` from its RPM bucket at the dispatch's capacity and rate, with `others`
     * (names under the buckets' prefix) all or none. `configuredOrgRpm`: the caller's per-org rpm of the model, for
     * one whose limits no producer stored.
     */
    async take(org: string, model: string, configuredOrgRpm: number | undefined, others: Array<{ name: string; capacity: number; refillPerMs: number; cost: number }> = []): Promise<RawTake> {
      const flat = others.flatMap((o) => [o.name, o.capacity, o.refillPerMs, o.cost]);
      const [allowed, ms, limitedBy, now] = (await call('take', [org, model, configuredOrgRpm ?? '', 1, ...flat])) as [number, number, string, number];
      return { allowed: allowed === 1, msBeforeNext: ms, limitedBy, nowMs: now };
    },
    /** Op take with cost -1: gives a request `take` took back to the org's bucket alone. */
    async giveBack(org: string, model: string, configuredOrgRpm: number | undefined): Promise<void> {
      await call('take', [org, model, configuredOrgRpm ?? '', -1]);
    },
    /** `delayMs`: from now by Redis's clock, as repark's (the script adds it to its TIME). */
    async block(model: string, delayMs: number, reason: string): Promise<void> {
      await call('block', [model, Math.ceil(delayMs), reason]);
    },
    async why(id: string): Promise<WhyRaw | null> {
      const r = (await why(keys.script, [id, d.concurrency])) as [string, string, string, number] | null;
      if (!r) return null;
      return { reason: r[0], limit: r[1], etaMs: Number(r[2]), position: r[3] };
    },
    /** Orgs with work waiting or in flight (at most `limit`), with their cumulative throttled seconds. */
    async gauges(limit: number): Promise<Array<{ org: string; waiting: number; inFlight: number; throttledS: number }>> {
      const flat = (await gauges(keys.script, [limit])) as Array<string | number>;
      const out = [];
      for (let i = 0; i + 3 < flat.length; i += 4) out.push({ org: String(flat[i]), waiting: Number(flat[i + 1]), inFlight: Number(flat[i + 2]), throttledS: Number(flat[i + 3]) });
      return out;
    },
    async stats(org: string): Promise<{ waiting: number; backoff: number; inFlight: number; vt: number; plan: Record<string, string> }> {
      const [waiting, backoff, inFlight, vt, flat] = (await stats(keys.script, [org])) as [number, number, number, string, string[]];
      const plan: Record<string, string> = {};
      for (let i = 0; i + 1 < flat.length; i += 2) plan[flat[i]] = flat[i + 1];
      return { waiting, backoff, inFlight, vt: Number(vt), plan };
    },
    /** Every key the scripts build from `keys.script`, in FAIR_KEY_NAMES order (for the test that they match). */
    async scriptKeyNames(): Promise<string[]> {
      return (await call('keys', [])) as string[];
    },
  };
}

export type FairLua = ReturnType<typeof createFairLua>;
