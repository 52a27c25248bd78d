import { randomUUID } from 'node:crypto';
import type { RedisClient } from '../infra/lua.js';
import { defineLua } from '../infra/lua.js';
import { batchKeys, usageStreamKey } from '../core/queue-keys.js';
import { RUN_FIELD } from '../infra/db/run-stream.js';

/**
 * A batch-tier job: pending (waits for a batch), submitted, done / failed (its answer is here), fallback (runs
 * standard), cancelled (its job was cancelled: never sent, or its answer dropped).
 */
export type BatchJobState = 'pending' | 'submitted' | 'done' | 'failed' | 'fallback' | 'cancelled';

export interface BatchJobRecord {
  model: string;
  state: BatchJobState;
  addedAt: number;
  /** The creation time of the job that recorded it: a job re-created under the same id is another job. */
  ts?: number;
  deadlineAt?: number;
  intent?: string;
  /** The inline response (GenerateContentResponse JSON) once done; the per-request error ({code, message}) once failed. */
  result?: string;
  error?: string;
  /** The attempt (its attemptsMade) the answer was served to: a re-run of that attempt is served it again. */
  readBy?: number;
  /** Whose request it is: an answer Gemini bills that the job no longer takes (it fell back, was cancelled) is billed to it. */
  owner?: BatchOwner;
}

/** The job a batch request was made for, as its usage row names it. */
export interface BatchOwner {
  orgId: string;
  agent: string;
  action: string;
  /** The attempt (attemptsMade + 1) that recorded the request. */
  attempt: number;
  requestId?: string;
}

/** One batch: recorded before `batches.create` (its intent), named once created or adopted. */
export interface BatchIntent {
  id: string;
  model: string;
  displayName: string;
  jobs: string[];
  createdAt: number;
  /** The earliest deadline of its jobs still waiting for it (ms), if any has one. */
  minDeadline?: number;
  /** `batches/...` once created or adopted; absent = create may or may not have happened (resolve by displayName). */
  name?: string;
  state?: string;
}

/** Records outlive Gemini's 48 h batch expiry by a day. */
const TTL_S = 72 * 3600;

/** The batch tier's Redis state (keys: `batchKeys` in queue-keys.ts). */
export function createBatchStore(deps: { redis: RedisClient; prefix: string }) {
  const { redis } = deps;
  const k = batchKeys(deps.prefix);
  const addLua = defineLua(redis, 'batch-add-4.lua');
  const openLua = defineLua(redis, 'batch-open-N.lua');
  const moveLua = defineLua(redis, 'batch-move-2.lua');
  const settleLua = defineLua(redis, 'batch-settle-3.lua');
  const cancelLua = defineLua(redis, 'batch-cancel-3.lua');
  const usageKey = usageStreamKey(deps.prefix);
  const releaseLua = defineLua(redis, 'lock-release-1.lua');

  const recordOf = (h: Record<string, string>): BatchJobRecord | undefined =>
    h.state
      ? {
          model: h.model,
          state: h.state as BatchJobState,
          addedAt: Number(h.addedAt),
          ...(h.ts ? { ts: Number(h.ts) } : {}),
          ...(h.deadlineAt ? { deadlineAt: Number(h.deadlineAt) } : {}),
          ...(h.intent ? { intent: h.intent } : {}),
          ...(h.result ? { result: h.result } : {}),
          ...(h.error ? { error: h.error } : {}),
          ...(h.readBy ? { readBy: Number(h.readBy) } : {}),
          ...(h.owner ? { owner: JSON.parse(h.owner) as BatchOwner } : {}),
        }
      : undefined;

  const intentOf = (id: string, h: Record<string, string>): BatchIntent | undefined =>
    h.model
      ? {
          id,
          model: h.model,
          displayName: h.displayName,
          jobs: JSON.parse(h.jobs) as string[],
          createdAt: Number(h.createdAt),
          ...(h.minDeadline ? { minDeadline: Number(h.minDeadline) } : {}),
          ...(h.name ? { name: h.name } : {}),
          ...(h.state ? { state: h.state } : {}),
        }
      : undefined;

  return {
    /**
     * Adds the job's request to its model's pending set unless this job (`jobTs`: its creation time) is known;
     * its state either way. A record of an earlier job under the same id is replaced (an answer it never read is
     * billed in the same script: that job was removed while the answer waited).
     */
    async add(jobId: string, jobTs: number, model: string, request: unknown, deadlineAt: number | undefined, now = Date.now(), owner?: BatchOwner): Promise<BatchJobState> {
      return (await addLua([k.job(jobId), k.queue(model), k.models, usageKey], [jobId, model, JSON.stringify(request), deadlineAt ?? '', now, TTL_S, jobTs, owner ? JSON.stringify(owner) : '', RUN_FIELD])) as BatchJobState;
    },
    /** The job's record; with `jobTs`, none when the record is another job's (an earlier one under the same id). */
    async job(jobId: string, jobTs?: number): Promise<BatchJobRecord | undefined> {
      const rec = recordOf(await redis.hgetall(k.job(jobId)));
      return rec && jobTs !== undefined && rec.ts !== undefined && rec.ts !== jobTs ? undefined : rec;
    },
    /**
     * The job no longer takes an answer (cancelled, or failed for good): out of the pending set and marked
     * cancelled in one script (a batch that holds it already hands it nothing). An answer stored that no attempt
     * read is dropped too, and its usage row (`bill`) appended to the usage stream in the same script: Gemini
     * billed it. False when there was nothing of that job to cancel.
     */
    async cancel(jobId: string, jobTs: number): Promise<boolean> {
      const model = await redis.hget(k.job(jobId), 'model');
      if (!model) return false;
      return (await cancelLua([k.job(jobId), k.queue(model), usageKey], [jobId, jobTs, TTL_S, RUN_FIELD])) === 1;
    },
    async models(): Promise<string[]> {
      return redis.smembers(k.models);
    },
    /** The model's pending jobs, oldest first, with the time each was added. */
    async pending(model: string, max: number): Promise<Array<{ id: string; addedAt: number }>> {
      const flat = await redis.zrange(k.queue(model), 0, max - 1, 'WITHSCORES');
      const out: Array<{ id: string; addedAt: number }> = [];
      for (let i = 0; i < flat.length; i += 2) out.push({ id: flat[i], addedAt: Number(flat[i + 1]) });
      return out;
    },
    /**
     * Records the intent to submit a model's pending jobs as one batch (its displayName made here), in one
     * script: only jobs still pending join, and leave the pending set with it (`batch-open-N.lua`). Undefined
     * when none was still pending.
     */
    async openIntent(model: string, ids: string[], displayPrefix: string): Promise<BatchIntent | undefined> {
      const id = randomUUID();
      const displayName = `${displayPrefix}-${id}`;
      const createdAt = Date.now();
      const jobs = (await openLua([k.intent(id), k.open, k.queue(model), ...ids.map((j) => k.job(j))], [id, model, displayName, createdAt, TTL_S, ...ids])) as string[];
      if (!jobs.length) return undefined;
      return intentOf(id, await redis.hgetall(k.intent(id)));
    },
    /**
     * Moves a job from `from` (in `intent`, when given) to `to`, with an optional field; false if it was not in
     * `from`. `bill`: an answer's usage row (encoded), kept for whatever drops the answer unread; the answer joins
     * the stored answers the collector's sweep reads (`storedAnswers`) in the same call.
     */
    async move(jobId: string, from: BatchJobState, to: BatchJobState, opts: { intent?: string; field?: 'result' | 'error' | 'readBy'; value?: string; bill?: string } = {}): Promise<boolean> {
      return (await moveLua([k.job(jobId), k.stored], [from, opts.intent ?? '', to, opts.field ?? '', opts.value ?? '', TTL_S, opts.bill ?? '', jobId, Date.now()])) === 1;
    },
    /** How long a record lives after its last change: an answer stored and never read lapses this long after. */
    recordTtlMs: TTL_S * 1000,
    /**
     * Answers stored with their bill, oldest first (`max` at most), with the time each was stored: some since read
     * or dropped (the sweep's `settle` takes those out), the rest still unread.
     */
    async storedAnswers(max: number): Promise<Array<{ id: string; storedAt: number }>> {
      const flat = await redis.zrange(k.stored, 0, max - 1, 'WITHSCORES');
      const out: Array<{ id: string; storedAt: number }> = [];
      for (let i = 0; i < flat.length; i += 2) out.push({ id: flat[i], storedAt: Number(flat[i + 1]) });
      return out;
    },
    /**
     * The job of `jobTs` (undefined: a record without a creation time) will never read its stored answer: dropped
     * and billed (batch-settle-3.lua), once. True when this call dropped an unread answer; an entry whose answer
     * was read or dropped since leaves the stored answers either way.
     */
    async settle(jobId: string, jobTs: number | undefined): Promise<boolean> {
      return (await settleLua([k.job(jobId), k.stored, usageKey], [jobId, jobTs ?? '', TTL_S, RUN_FIELD])) === 1;
    },
    /** The inline requests of jobs, in order (a job whose record expired or that was cancelled since has none). */
    async requests(jobs: string[]): Promise<Array<unknown | undefined>> {
      const raw = await Promise.all(jobs.map((id) => redis.hmget(k.job(id), 'state', 'req')));
      return raw.map(([state, r]) => (r && state !== 'cancelled' ? (JSON.parse(r) as unknown) : undefined));
    },
    async openIntents(): Promise<BatchIntent[]> {
      const ids = await redis.smembers(k.open);
      const all = await Promise.all(ids.map(async (id) => intentOf(id, await redis.hgetall(k.intent(id)))));
      return all.filter((i): i is BatchIntent => i !== undefined);
    },
    async intent(id: string): Promise<BatchIntent | undefined> {
      return intentOf(id, await redis.hgetall(k.intent(id)));
    },
    async setIntent(id: string, fields: { name?: string; state: string }): Promise<void> {
      await redis.hset(k.intent(id), fields);
    },
    /** The earliest deadline of the jobs still waiting for the batch (none: no job has one left). */
    async setMinDeadline(id: string, ms: number | undefined): Promise<void> {
      if (ms === undefined) await redis.hdel(k.intent(id), 'minDeadline');
      else await redis.hset(k.intent(id), { minDeadline: String(ms) });
    },
    async closeIntent(id: string, state: string): Promise<void> {
      await redis.multi().hset(k.intent(id), { state }).srem(k.open, id).exec();
    },
    /** One collector run at a time across processes: a lock with a token, released by its holder. */
    async lock(ttlMs: number): Promise<(() => Promise<void>) | undefined> {
      const token = randomUUID();
      if ((await redis.set(k.lock, token, 'PX', ttlMs, 'NX')) !== 'OK') return undefined;
      // Released only if still ours (one script): a run that outlived its lock must not drop the next run's.
      return async () => {
        await releaseLua([k.lock], [token]);
      };
    },
    /** What the job view shows of a batch-tier job: its model, its batch and the batch's state. */
    async view(jobId: string): Promise<{ model: string; batch?: string; state: string } | undefined> {
      const rec = recordOf(await redis.hgetall(k.job(jobId)));
      if (!rec) return undefined;
      const intent = rec.intent ? intentOf(rec.intent, await redis.hgetall(k.intent(rec.intent))) : undefined;
      return { model: rec.model, ...(intent?.name ? { batch: intent.name } : {}), state: intent?.state ?? 'COLLECTING' };
    },
  };
}

export type BatchStore = ReturnType<typeof createBatchStore>;
