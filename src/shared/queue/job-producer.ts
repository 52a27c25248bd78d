import { createHash, randomUUID } from 'node:crypto';
import { chooseTier, type TierPolicy } from './tier-choice.js';
import { Job, type FlowJob, type FlowProducer, type JobsOptions, type ParentOptions } from 'bullmq';
import type { RedisClient } from '../infra/redis/connection.js';
import type { ModelTier } from '../agents/define-agent.js';
import { canonicalJson } from '../core/canonical-json.js';
import { IdempotencyConflictError, ValidationError } from '../core/errors.js';
import { cancelledKey, idempotencyRecordKey } from '../core/queue-keys.js';
import { shownState } from '../core/cancel.js';
import { readCancelTombstone } from './cancel-tombstone.js';
import type { AgentJobData, AgentResult } from '../core/types.js';
import { zodDetails } from '../core/zod-details.js';
import { isParked, PARK_SCORE_MIN, parkedJobFields, parkedState, parkedJobOptions, type FairEntry, type FairScheduler } from '../fair/index.js';
import { admitOrThrow, refundFailedAdd, type AdmissionCheck, type DailyReservation } from './admission-check.js';
import { agentJobOptions, type AgentQueue, type RetentionOptions } from './agent-queue.js';
import { estimateTokens } from './estimate-tokens.js';
import { laneModelOf } from './fair-entry.js';
import { bulkRequestSchema, jobRequestSchema, type JobRequest } from './job-request.js';
import { createOrgJobIndexWriter } from './org-job-index.js';
import { QUEUE } from '../core/queue-names.js';
import { injectTrace, inSpan, SpanKind } from '../telemetry/tracing.js';

/** The enqueue span: BullMQ as the messaging system, one span per add (single, bulk, flow or step). */
function enqueueSpan<T>(orgId: string, prepared: PreparedJob[], fn: (withTrace: (d: AgentJobData) => AgentJobData) => Promise<T>): Promise<T> {
  const attributes = {
    'messaging.system': 'bullmq',
    'messaging.operation.type': 'send',
    'messaging.destination.name': QUEUE.agent,
    'messaging.batch.message_count': prepared.length,
    'agentq.org_id': orgId,
    ...(prepared.length === 1 ? { 'messaging.message.id': prepared[0].opts.jobId, 'agentq.job.id': prepared[0].opts.jobId, 'agentq.agent': prepared[0].data.agent, 'agentq.action': prepared[0].data.action } : {}),
  };
  return inSpan(`send ${QUEUE.agent}`, { kind: SpanKind.PRODUCER, attributes }, async () => {
    // The enqueue span's context rides in each job, so the worker's spans are its children (undefined: not traced).
    const trace = injectTrace();
    return fn(trace ? (d) => ({ ...d, trace }) : (d) => d);
  });
}

/** What the producer needs from the agent registry: input validation (throws ValidationError) and tiers. */
export interface InputValidator {
  validateInput(agent: string, action: string, input: unknown): unknown;
  resolve(agent: string, action: string): { action: { model: ModelTier } };
}

export interface EnqueueMeta {
  orgId: string;
  requestId?: string;
  userId?: string;
}

export interface EnqueuedJob {
  id: string;
  state: string;
}

/** One validated job request, ready to be added (alone, in bulk, as a flow child or a pipeline step). */
export interface PreparedJob {
  name: string;
  data: AgentJobData;
  opts: JobsOptions & { jobId: string };
  idempotent: boolean;
  /** The idempotency key's field in the request (`options.idempotencyKey`, `jobs.3.options.idempotencyKey`): a 409 names it. */
  keyPath?: string;
  /** What the fair dispatcher needs: the model the job will call and its token estimate. */
  lane: { model: string; estTokens: number; priority?: number; delayMs?: number };
}

export interface JobProducerDeps {
  queue: AgentQueue;
  agents: InputValidator;
  models: Record<ModelTier, string>;
  /** The models `options.model` may name (`configuredModels(cfg)`); any other is a 400 before enqueue. */
  allowedModels: readonly string[];
  /** Absent only in the bench's baseline (runtime `fairDispatch: false`): jobs go straight to BullMQ's wait list. */
  scheduler?: Pick<FairScheduler, 'enqueue' | 'why'>;
  retention: RetentionOptions;
  /** Rate plan and quotas; absent for trusted callers (the direct producer, pipeline steps of an admitted run). */
  admission?: AdmissionCheck;
  /** Adds fan-out flows (parent in the flows queue, children agent jobs); absent where flows are not served. */
  flows?: FlowProducer;
  /** Asks the workers for a dispatch (the fair kick channel). */
  kick?: () => Promise<unknown>;
  /**
   * false: jobs are laned without dispatching, then the workers are kicked (the direct producer: a process outside
   * agentq's deployment should not make decisions with its own copy of the limits). Default: the enqueue's own call
   * dispatches, and a wake-up it left (a lane asleep on a limit, a timer), which the dispatcher reports to an
   * enqueue without handing it over (fair-claim.lua `nextWake`: this process may run no dispatch loop), goes to the
   * workers' loops through the scheduler's own kick.
   */
  dispatch?: boolean;
  /** How a deadline maps to a tier (default: DEFAULT_TIER_POLICY). */
  tierPolicy?: TierPolicy;
}

/**
 * The one path by which agent jobs enter agentq: validation, job options, idempotency, admission, the per-org
 * index, and the fair dispatcher. The HTTP API, the direct producer, flows (parent and children) and pipeline
 * steps all come through here, so every job of an org is listed, limited and scheduled alike.
 *
 * Jobs are added to BullMQ parked (delayed to a far-future instant BullMQ never reaches) and handed to the
 * dispatcher, which promotes them when their org's share, concurrency and rate limits allow. A job without a
 * BullMQ parent is stored parked and laned by one dispatcher call (`storeAndLane`); a flow child or pipeline
 * step is added by BullMQ (parent links) and laned after: a crash in between leaves a parked job the orphan
 * sweep (workers' maintenance) lanes again, for what is left of its delay (`data.delayMs`).
 */
export function createJobProducer(deps: JobProducerDeps) {
  const { queue, agents } = deps;
  const allowed = new Set(deps.allowedModels);
  const jobDefaults = agentJobOptions(deps.retention);
  // An idempotency key's record outlives its job (which retention may remove seconds after it ran): this long.
  const idemTtlMs = (deps.retention.idempotencyTtlS ?? DEFAULT_IDEMPOTENCY_TTL_S) * 1000;
  const prefix = queue.opts.prefix ?? 'bull';
  // Per-org index for `GET /v1/jobs`. With the fair dispatcher the lane's enqueue script adds the jobs to it
  // (`indexAt`: same hash tag, no round trip of its own) and only the amortised trim is sent from here; without
  // it, a ZADD alongside each add on the queue's own connection. A failed index write only hides the job from
  // listings, so it never fails the enqueue itself.
  const index = createOrgJobIndexWriter({ client: () => queue.getBackend().client as unknown as Promise<RedisClient>, prefix });
  const indexed = (orgId: string, ps: PreparedJob[]) =>
    (deps.scheduler ? index.trim(orgId) : index.add(orgId, ps.map((p) => ({ id: p.opts.jobId, at: p.data.enqueuedAt })))).catch(() => undefined);

  function prepare(raw: unknown, meta: EnqueueMeta, pathPrefix = ''): PreparedJob {
    const parsed = jobRequestSchema.safeParse(raw);
    if (!parsed.success) throw new ValidationError('invalid job request', zodDetails(parsed.error, pathPrefix));
    return prepareChecked(parsed.data, meta, pathPrefix);
  }

  /** `prepare` for a request already checked against `jobRequestSchema`: the agent's input, the model, the tier. */
  function prepareChecked(req: JobRequest, meta: EnqueueMeta, pathPrefix = ''): PreparedJob {
    let input: unknown;
    try {
      input = agents.validateInput(req.agent, req.action, req.input);
    } catch (err) {
      if (err instanceof ValidationError && pathPrefix) {
        throw new ValidationError(err.message, err.details.map((d) => ({ ...d, path: `${pathPrefix}${d.path}` })));
      }
      throw err;
    }
    const opts = req.options ?? {};
    if (opts.model && !allowed.has(opts.model)) {
      const list = [...allowed].join(', ');
      throw new ValidationError(`unknown model "${opts.model}"; allowed: ${list}`, [
        { path: `${pathPrefix}options.model`, message: `not a configured model; allowed: ${list}` },
      ]);
    }
    const now = Date.now();
    const { tier, deadlineAt } = chooseTier(opts, now, deps.tierPolicy, `${pathPrefix}options.deadline`);
    // Built by assignment, not conditional spreads: this runs once per job of a bulk request, and each
    // `...(cond ? {...} : {})` is a property copy of its own.
    const data: AgentJobData = { orgId: meta.orgId, agent: req.agent, action: req.action, input, enqueuedAt: now };
    if (opts.model) data.model = opts.model;
    if (opts.stream) data.stream = true;
    if (tier !== 'standard') data.tier = tier;
    if (deadlineAt !== undefined) data.deadlineAt = deadlineAt;
    if (meta.requestId) data.requestId = meta.requestId;
    if (meta.userId) data.userId = meta.userId;
    // In the job itself, at no command of its own: the parked job's options carry no delay, and a producer that
    // dies between a flow child's add and its lane leaves the orphan sweep nothing else to read it from.
    if (opts.delayMs) data.delayMs = opts.delayMs;
    if (opts.idempotencyKey) data.fingerprint = requestFingerprint(req.agent, req.action, input, opts);
    // Idempotent jobs get an id derived from (org, key): BullMQ's add is a no-op for an existing id, atomically,
    // so racing duplicates all see the one job. Org is in the hash, so keys never collide across tenants.
    const jobId = opts.idempotencyKey ? idempotentJobId(meta.orgId, opts.idempotencyKey) : randomUUID();
    const lane: PreparedJob['lane'] = {
      model: laneModelOf({ agent: req.agent, action: req.action, model: opts.model, tier }, agents, deps.models),
      estTokens: estimateTokens(input),
    };
    if (opts.priority) lane.priority = opts.priority;
    if (opts.delayMs) lane.delayMs = opts.delayMs;
    return {
      name: `${req.agent}:${req.action}`,
      data,
      // The job's createdAt is its enqueue time, the same instant the org index (and `since`) sorts by.
      // Object.assign, not `{ ...jobDefaults, ...more }`: V8 (Node 20) copies an object literal that starts with a
      // spread fast, but adds each later property through a slow path (~2 us here, 0.15 us with assign; both
      // copy the same own properties in the same order, and neither source has a `__proto__` key).
      opts: Object.assign(
        {},
        jobDefaults,
        deps.scheduler
          ? parkedJobOptions(jobId, opts.priority, now)
          : { jobId, ...(opts.priority ? { priority: opts.priority } : {}), ...(opts.delayMs ? { delay: opts.delayMs } : {}) },
      ),
      idempotent: Boolean(opts.idempotencyKey),
      ...(opts.idempotencyKey ? { keyPath: `${pathPrefix}options.idempotencyKey` } : {}),
      lane,
    };
  }

  const entryOf = (p: PreparedJob): FairEntry => ({
    jobId: p.opts.jobId,
    orgId: p.data.orgId,
    model: p.lane.model,
    estTokens: p.lane.estTokens,
    ...(p.lane.priority ? { priority: p.lane.priority } : {}),
    // The delay itself, counted from the enqueue's script call on Redis's clock (not `enqueuedAt`, this process's).
    ...(p.lane.delayMs ? { delayMs: p.lane.delayMs } : {}),
    indexAt: p.data.enqueuedAt,
  });

  async function lane(prepared: PreparedJob[]): Promise<void> {
    if (!deps.scheduler) return;
    await laneEntries(prepared.map(entryOf));
  }

  /** Returns how many entries with `store` the call stored (the others' jobs existed already). */
  async function laneEntries(entries: FairEntry[]): Promise<number> {
    const dispatch = deps.dispatch !== false;
    const r = await deps.scheduler!.enqueue(entries, { dispatch });
    // Laned without a dispatch: the workers dispatch them. (A wake-up a dispatch left is handed over by the scheduler.)
    if (!dispatch) await deps.kick?.();
    return r.stored;
  }

  /**
   * Without a BullMQ parent, the jobs are stored parked by the dispatcher's own enqueue call (`laneEntries` of
   * these entries), which lanes them
   * in the same call: one round trip and one script call for a bulk request instead of BullMQ's add (a script
   * call per job) and then the lane's call, and no parked job left unlaned between the two.
   */
  const storedEntries = (prepared: PreparedJob[], withTrace: (d: AgentJobData) => AgentJobData): FairEntry[] =>
    prepared.map((p) => {
      // Added to entryOf's fresh object rather than spread into another (`{ ...entryOf(p), store }` takes V8's slow
      // path for each property after the spread: see prepareChecked's options).
      const entry = entryOf(p);
      entry.store = parkedJobFields(queue, p.name, withTrace(p.data), p.opts);
      // The key's record goes with the job, in the same script call, which reads it first (fair-store-parked.lua).
      if (p.idempotent) entry.idem = { fingerprint: p.data.fingerprint!, ttlMs: idemTtlMs };
      return entry;
    });

  /**
   * The state a caller sees right after enqueue of a job it made: parked jobs are "waiting", "prioritized" with a
   * priority (as GET shows them parked and once dispatched, `parkedState`), or "delayed" until their time (as GET
   * shows a parked job whose own `delayMs` still runs). The same for a job made under an
   * idempotency key: until 2026-12-07 that one's state was read back, and a parked `delayMs` job read "waiting".
   */
  const stateOf = (p: PreparedJob) => (p.lane.delayMs ? 'delayed' : p.lane.priority ? 'prioritized' : 'waiting');

  /**
   * An idempotent re-enqueue answers the existing job's state as `GET /v1/jobs/:id` shows it (job-service.ts):
   * parked for the dispatcher reads "waiting" ("prioritized" with a priority, `parkedState`), or "delayed" while its
   * own `delayMs` still runs; cancelled reads
   * "cancelled", whether it failed with the cancel's reason (it ran) or was removed with a tombstone (it had not);
   * any other job no longer kept reads BullMQ's "unknown". A job this request made answers `stateOf`, as one
   * without a key: no read.
   */
  async function existingState(p: PreparedJob, id: string, existing: Set<string>): Promise<string> {
    if (!p.idempotent || !existing.has(id)) return stateOf(p);
    const state = await queue.getJobState(id);
    const client = (await queue.getBackend().client) as unknown as RedisClient;
    if (state === 'unknown') return (await readCancelTombstone(client, prefix, p.data.orgId, id)) ? 'cancelled' : state;
    if (state === 'failed') return shownState(state, (await queue.getJob(id))?.failedReason);
    if (state !== 'delayed' || !deps.scheduler) return state;
    // Parked by its add, or again after it started (a retry, a deferral: the hash then misses it, the score does not).
    const job = await queue.getJob(id);
    const parked = (job && isParked(job)) || Number((await client.zscore(queue.toKey('delayed'), id)) ?? 0) >= PARK_SCORE_MIN;
    if (!parked) return state;
    return (await deps.scheduler.why(id))?.reason === 'delayed' ? 'delayed' : parkedState(job ?? {});
  }

  /**
   * An idempotency key names one request: the same key with another agent, action, input or options is a 409
   * naming the job it already made and the key's field. Read before the add (a bulk request is refused whole) and
   * again after it (two different requests racing on one key: the loser's add was a no-op and it must not be told
   * "202"). What names the request: the key's record (kept IDEMPOTENCY_TTL_S, however soon the job is removed),
   * else the job's own data (a job made before records were written, or kept longer than its record). Both reads
   * leave in one tick: one round trip, on a cluster one node (one hash tag).
   * Returns the ids of the idempotent jobs that exist already (the same request sent again), not new jobs, and of
   * those `gone`: the record stands but retention removed the job; the re-send answers its id, makes no job.
   */
  async function refuseReusedKeys(prepared: PreparedJob[]): Promise<{ existing: Set<string>; gone: Set<string> }> {
    const existing = new Set<string>();
    const gone = new Set<string>();
    const idem = prepared.filter((p) => p.idempotent);
    if (idem.length === 0) return { existing, gone };
    const conflict = (p: PreparedJob, why: string) =>
      new IdempotencyConflictError(`idempotencyKey ${why} (job ${p.opts.jobId})`, p.opts.jobId, [
        { path: p.keyPath ?? 'options.idempotencyKey', message: `${why}: job ${p.opts.jobId}` },
      ]);
    // Within the request too: two elements naming one key with different requests would both be stored (the
    // read below finds neither) before the read after the add refused the request.
    const first = new Map<string, PreparedJob>();
    for (const p of idem) {
      const seen = first.get(p.opts.jobId);
      if (!seen) first.set(p.opts.jobId, p);
      else if (seen.data.fingerprint !== p.data.fingerprint) throw conflict(p, 'used twice in this request for different requests');
    }
    const client = (await queue.getBackend().client) as unknown as RedisClient;
    const stored = await Promise.all(
      idem.map((p) => Promise.all([client.hget(idempotencyRecordKey(prefix, p.opts.jobId), 'fp'), client.hget(queue.toKey(p.opts.jobId), 'data')])),
    );
    idem.forEach((p, i) => {
      const [recorded, raw] = stored[i];
      if (!recorded && !raw) return;
      existing.add(p.opts.jobId);
      if (!raw) gone.add(p.opts.jobId);
      // A job made before fingerprints were stored cannot be compared: it keeps answering as before.
      const fingerprint = recorded ?? (JSON.parse(raw!) as Partial<AgentJobData>).fingerprint;
      if (fingerprint && fingerprint !== p.data.fingerprint) throw conflict(p, 'already used for a different request');
    });
    return { existing, gone };
  }

  /** The idempotent jobs of `prepared` this request would make (one per job id): their keys' records go with them. */
  const madeKeys = (prepared: PreparedJob[], existing: Set<string>): PreparedJob[] => [
    ...new Map(prepared.filter((p) => p.idempotent && !existing.has(p.opts.jobId)).map((p) => [p.opts.jobId, p])).values(),
  ];

  /**
   * Without the dispatcher's add (which records the keys in its own call): BullMQ's add of `items` and the records
   * of the keys of `made` in one MULTI. Written after the add, a record was lost to a crash or a failed reply in
   * between (and never written by a retry, which finds the job), or came after retention had already removed a job
   * that ran at once: either way a re-send then made and ran the job again. Each record field is written only where
   * none stands (HSETNX, PEXPIRE NX): of racing requests under one key, the transaction that stored the job (BullMQ's
   * add of the others is its no-op by id) is the one whose record stands, so no record names another request than
   * its job's. The job keys and the records share the queue's hash tag (one slot on a cluster).
   * Returns how many of `made` this transaction stored (their records are its own): the others' jobs a racing
   * request stored first.
   */
  async function addWithRecords(items: { name: string; data: AgentJobData; opts: JobsOptions & { jobId: string } }[], made: PreparedJob[]): Promise<number> {
    const client = await queue.getBackend().client;
    const tx = client.multi();
    const defaults = queue.defaultJobOptions;
    for (const it of items) {
      const job = new Job<AgentJobData, AgentResult>(queue, it.name, it.data, { ...defaults, ...it.opts }, it.opts.jobId);
      // Queued on the transaction synchronously (BullMQ's own addBulk relies on it); its reply is read from exec.
      void job.addJob(tx, { parentKey: job.parentKey, parentDependenciesKey: job.parentKey ? `${job.parentKey}:dependencies` : '' });
    }
    const cmd = tx as unknown as ReturnType<RedisClient['multi']>;
    for (const p of made) {
      const key = idempotencyRecordKey(prefix, p.opts.jobId);
      cmd.hsetnx(key, 'id', p.opts.jobId).hsetnx(key, 'fp', p.data.fingerprint!).pexpire(key, idemTtlMs, 'NX');
      // A cancel tombstone of an earlier job of this id (its key's record lapsed first) describes that job, not this
      // one: it goes with the add, as the dispatcher's add drops it (fair-store-parked.lua).
      cmd.del(cancelledKey(prefix, p.opts.jobId));
    }
    const replies = await tx.exec();
    if (!replies) throw new Error('enqueue transaction aborted');
    replies.forEach(([err, reply], i) => {
      if (err) throw err;
      // BullMQ's add answers a negative code for a job it refused (a missing parent, ...), as its own add throws.
      if (i < items.length && typeof reply === 'number' && reply < 0) throw new Error(`BullMQ refused the add of job ${items[i].opts.jobId} (code ${reply})`);
    });
    // Four replies a record: the HSETNX of its `id` answers 1 where this transaction wrote it.
    return made.filter((_, k) => replies[items.length + 4 * k][1] === 1).length;
  }

  /** The jobs of `prepared` that would be new: one per job id, not counting those that exist already. */
  function newJobCount(prepared: PreparedJob[], existing: Set<string>): number {
    if (existing.size === 0 && !prepared.some((p) => p.idempotent)) return prepared.length;
    return new Set(prepared.map((p) => p.opts.jobId).filter((id) => !existing.has(id))).size;
  }

  /** Adds prepared jobs of one org (already validated), with an optional BullMQ parent (pipeline steps). */
  async function add(prepared: PreparedJob[], meta: EnqueueMeta, o: { parent?: ParentOptions; admitted?: boolean; ignoreDependencyOnFailure?: boolean } = {}): Promise<EnqueuedJob[]> {
    if (prepared.length === 0) return [];
    const { existing, gone } = await refuseReusedKeys(prepared);
    return enqueueSpan(meta.orgId, prepared, async (withTrace) => {
      // Only new jobs count against the org's daily job limit: an idempotent re-send of a job that exists (or whose
      // key's record outlived it) does not.
      const reserved = o.admitted ? undefined : await admitOrThrow(deps.admission, meta.orgId, prepared.length, newJobCount(prepared, existing));
      // Whether the add was sent to Redis, and whether what it stored is known (the reservation settled).
      let sent = false;
      let settled = false;
      try {
        const ids = prepared.map((p) => p.opts.jobId);
        if (deps.scheduler && !o.parent && !o.ignoreDependencyOnFailure) {
          const entries = storedEntries(prepared, withTrace);
          sent = true;
          const [stored] = await Promise.all([laneEntries(entries), indexed(meta.orgId, prepared)]);
          settled = true;
          // Jobs reserved as new that another request stored first (the same idempotency key, sent twice at once)
          // are given back. A failed refund only leaves the day's count high: the jobs are stored, so no error.
          if (reserved && stored < reserved.jobs) {
            await deps.admission?.refund?.(meta.orgId, reserved, reserved.jobs - stored).catch(() => undefined);
          }
          // Again after the add: of two different requests racing on one key, the loser learns it here (its
          // add was a no-op, and so was its lane: the job the winner stored is laned once).
          await refuseReusedKeys(prepared);
        } else {
          // A job whose key's record outlived it is not added again (the dispatcher's add script checks the same
          // atomically; here a record that appears between the read and the add came with its job, in one MULTI, and
          // BullMQ's add by id is a no-op while that job is kept).
          const adding = gone.size ? prepared.filter((p) => !gone.has(p.opts.jobId)) : prepared;
          const extra: JobsOptions = { ...(o.parent ? { parent: o.parent } : {}), ...(o.ignoreDependencyOnFailure ? { ignoreDependencyOnFailure: true } : {}) };
          const items = adding.map((p) => ({ name: p.name, data: withTrace(p.data), opts: { ...p.opts, ...extra } }));
          const made = madeKeys(adding, existing);
          sent = true;
          const [keysStored] = await Promise.all([
            items.length === 0
              ? undefined
              : made.length > 0
                ? addWithRecords(items, made)
                : items.length === 1
                  ? queue.add(items[0].name, items[0].data, items[0].opts)
                  : queue.addBulk(items),
            indexed(meta.orgId, adding),
          ]);
          // As the dispatcher's path: jobs reserved as new that a racing request under the same key stored first are
          // given back (the jobs without a key are all new, each its own id).
          if (reserved && typeof keysStored === 'number') {
            const stored = new Set(adding.filter((p) => !p.idempotent).map((p) => p.opts.jobId)).size + keysStored;
            if (stored < reserved.jobs) await deps.admission?.refund?.(meta.orgId, reserved, reserved.jobs - stored).catch(() => undefined);
          }
          await refuseReusedKeys(prepared);
          await lane(adding);
        }
        // Only the state of a job sent again under its key is read back (one request per job); a new job's is
        // known. A job whose key's record outlived it reads BullMQ's "unknown" (no such job): its id stands, its result is gone.
        if (existing.size === 0) return prepared.map((p, i) => ({ id: ids[i], state: stateOf(p) }));
        return await Promise.all(prepared.map(async (p, i) => ({ id: ids[i], state: await existingState(p, ids[i], existing) })));
      } catch (err) {
        // An add that failed for certain gives back what it reserved for jobs it did not store.
        if (!settled) await refundFailedAdd(deps.admission, meta.orgId, reserved, err, { sent, unstored: () => unstoredOf(prepared, existing) });
        throw err;
      }
    });
  }

  /** How many of the new jobs of `prepared` (one per job id, not in `existing`) are not stored now. */
  async function unstoredOf(prepared: PreparedJob[], existing: Set<string>): Promise<number> {
    const ids = [...new Set(prepared.map((p) => p.opts.jobId).filter((id) => !existing.has(id)))];
    if (ids.length === 0) return 0;
    const client = (await queue.getBackend().client) as unknown as RedisClient;
    const found = await Promise.all(ids.map((id) => client.exists(queue.toKey(id))));
    return found.filter((n) => n === 0).length;
  }

  return {
    prepare,
    prepareChecked,
    add,

    /**
     * Hands jobs already stored to the dispatcher again, without BullMQ's add: idempotent by job id, and a job no
     * longer parked (running, finished) is skipped. `meta` names the org (its queue shard, cell-routing.ts). A
     * pipeline run picked up again reaches its existing step this way: BullMQ's add of a job that exists, with a
     * parent, puts one that failed in the meantime back in the parent's dependencies, which then never empty.
     */
    relane: (prepared: PreparedJob[], _meta: EnqueueMeta) => lane(prepared),

    /** Spends the org's admission for `jobs` jobs that enter later with `admitted` (a pipeline run's steps). */
    admit: (orgId: string, jobs: number) => admitOrThrow(deps.admission, orgId, jobs),

    /**
     * Gives back `jobs` of `admit`'s reservation that were never made (a pipeline run's steps it stopped before). A
     * failed refund leaves the day's count high, never low: it is not an error of the caller's.
     */
    giveBack: async (orgId: string, reserved: DailyReservation, jobs: number): Promise<void> => {
      await deps.admission?.refund?.(orgId, reserved, jobs).catch(() => undefined);
    },

    /** Gives back `admit`'s reservation when what it was taken for failed to be added (see refundFailedAdd). */
    refundFailedAdd: (orgId: string, reserved: DailyReservation | undefined, err: unknown, o: { sent: boolean; unstored: () => Promise<number> }) =>
      refundFailedAdd(deps.admission, orgId, reserved, err, o),

    async enqueue(raw: unknown, meta: EnqueueMeta): Promise<EnqueuedJob> {
      const [job] = await add([prepare(raw, meta)], meta);
      return job;
    },

    /** All-or-nothing validation, then one dispatcher call that stores and lanes the jobs: all or nothing. */
    async enqueueBulk(raw: unknown, meta: EnqueueMeta): Promise<EnqueuedJob[]> {
      const shape = bulkRequestSchema.safeParse(raw);
      if (!shape.success) throw new ValidationError('invalid bulk request', zodDetails(shape.error));
      return add(shape.data.jobs.map((item, i) => prepare(item, meta, `jobs.${i}.`)), meta);
    },

    /**
     * `prepareChecked` for the elements of a bulk request already checked against `jobRequestSchema` (the API's
     * route schemas run it on every body), each element's error paths under `jobs.<i>.`. The API then `add`s
     * them, knowing their ids before the add is sent (an enqueue past its deadline names them).
     */
    prepareBulkChecked(reqs: readonly JobRequest[], meta: EnqueueMeta): PreparedJob[] {
      return reqs.map((req, i) => prepareChecked(req, meta, `jobs.${i}.`));
    },

    /**
     * A fan-out flow: `parent` (a flows-queue job) waits for `children` (prepared agent jobs), each a job of
     * the org, admitted, indexed and dispatched like any other. Children may fail without failing the parent.
     */
    async enqueueFlow(parent: Omit<FlowJob, 'children'>, children: PreparedJob[], meta: EnqueueMeta): Promise<void> {
      if (!deps.flows) throw new Error('this producer has no flow producer');
      const flows = deps.flows;
      await enqueueSpan(meta.orgId, children, async (withTrace) => {
        const reserved = await admitOrThrow(deps.admission, meta.orgId, children.length);
        const flow = { ...parent, children: children.map((p) => ({ name: p.name, queueName: QUEUE.agent, data: withTrace(p.data), opts: { ...p.opts, ignoreDependencyOnFailure: true } })) };
        try {
          await Promise.all([flows.add(flow), indexed(meta.orgId, children)]);
        } catch (err) {
          await refundFailedAdd(deps.admission, meta.orgId, reserved, err, { sent: true, unstored: () => unstoredOf(children, new Set()) });
          throw err;
        }
        await lane(children);
      });
    },
  };
}

export type JobProducer = ReturnType<typeof createJobProducer>;

/** What an idempotency key promises to repeat: agent, action, validated input and options, key order ignored. */
export function requestFingerprint(agent: string, action: string, input: unknown, options: Omit<NonNullable<JobRequest['options']>, 'idempotencyKey'> & { idempotencyKey?: string }): string {
  const { idempotencyKey: _key, ...rest } = options;
  return createHash('sha256').update(canonicalJson({ agent, action, input, options: rest })).digest('hex').slice(0, 32);
}

/** How long an idempotency key is remembered when the retention options name no IDEMPOTENCY_TTL_S: a day, as Stripe's. */
export const DEFAULT_IDEMPOTENCY_TTL_S = 24 * 3600;

export function idempotentJobId(orgId: string, key: string): string {
  return `idem-${createHash('sha256').update(orgId).update('\0').update(key).digest('hex').slice(0, 40)}`;
}
