import { randomUUID } from 'node:crypto';
import type { RedisClient } from '../infra/lua.js';
import { defineLua } from '../infra/lua.js';
import { batchKeys } from '../core/queue-keys.js';

/** A batch-tier job: pending (waits for a batch), submitted, done / failed (its answer is here), fallback (runs standard). */
export type BatchJobState = 'pending' | 'submitted' | 'done' | 'failed' | 'fallback';

export interface BatchJobRecord {
  model: string;
  state: BatchJobState;
  addedAt: number;
  deadlineAt?: number;
  intent?: string;
  /** The inline response (GenerateContentResponse JSON) once done; the per-request error ({code, message}) once failed. */
  result?: string;
  error?: string;
}

/** One batch: recorded before `batches.create` (its intent), named once created or adopted. */
export interface BatchIntent {
  id: string;
  model: string;
  displayName: string;
  jobs: string[];
  createdAt: number;
  /** The earliest deadline of its jobs (ms), if any has one. */
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
  const addLua = defineLua(redis, 'batch-add-3.lua');

  const recordOf = (h: Record<string, string>): BatchJobRecord | undefined =>
    h.state
      ? {
          model: h.model,
          state: h.state as BatchJobState,
          addedAt: Number(h.addedAt),
          ...(h.deadlineAt ? { deadlineAt: Number(h.deadlineAt) } : {}),
          ...(h.intent ? { intent: h.intent } : {}),
          ...(h.result ? { result: h.result } : {}),
          ...(h.error ? { error: h.error } : {}),
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
    /** Adds the job's request to its model's pending set unless the job is known; its state either way. */
    async add(jobId: string, model: string, request: unknown, deadlineAt: number | undefined, now = Date.now()): Promise<BatchJobState> {
      return (await addLua([k.job(jobId), k.queue(model), k.models], [jobId, model, JSON.stringify(request), deadlineAt ?? '', now, TTL_S])) as BatchJobState;
    },
    async job(jobId: string): Promise<BatchJobRecord | undefined> {
      return recordOf(await redis.hgetall(k.job(jobId)));
    },
    async setJob(jobId: string, fields: { state: BatchJobState; result?: string; error?: string }): Promise<void> {
      await redis.multi().hset(k.job(jobId), fields).expire(k.job(jobId), TTL_S).exec();
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
     * Records the intent to submit these jobs as one batch, in one transaction: the intent (with its
     * displayName), its place among the open ones, and the jobs moved from pending to submitted (`taken`: every
     * id leaving the pending set, `jobs` those still pending, which the batch carries). Run by the
     * collector holding its lock, so nothing else takes pending jobs meanwhile.
     */
    async openIntent(model: string, taken: string[], jobs: string[], displayPrefix: string): Promise<BatchIntent> {
      const records = await Promise.all(jobs.map((id) => redis.hget(k.job(id), 'deadlineAt')));
      const deadlines = records.filter((d): d is string => d !== null).map(Number);
      const id = randomUUID();
      const intent: BatchIntent = {
        id,
        model,
        displayName: `${displayPrefix}-${id}`,
        jobs,
        createdAt: Date.now(),
        ...(deadlines.length ? { minDeadline: Math.min(...deadlines) } : {}),
      };
      const m = redis.multi();
      m.hset(k.intent(id), { model, displayName: intent.displayName, jobs: JSON.stringify(jobs), createdAt: intent.createdAt, ...(intent.minDeadline ? { minDeadline: intent.minDeadline } : {}) });
      m.expire(k.intent(id), TTL_S);
      m.sadd(k.open, id);
      m.zrem(k.queue(model), ...taken);
      for (const j of jobs) m.hset(k.job(j), { state: 'submitted', intent: id });
      await m.exec();
      return intent;
    },
    /** The inline requests of jobs, in order (a job whose record expired has none). */
    async requests(jobs: string[]): Promise<Array<unknown | undefined>> {
      const raw = await Promise.all(jobs.map((id) => redis.hget(k.job(id), 'req')));
      return raw.map((r) => (r ? (JSON.parse(r) as unknown) : undefined));
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
    async closeIntent(id: string, state: string): Promise<void> {
      await redis.multi().hset(k.intent(id), { state }).srem(k.open, id).exec();
    },
    /** One collector run at a time across processes: a lock with a token, released by its holder. */
    async lock(ttlMs: number): Promise<(() => Promise<void>) | undefined> {
      const token = randomUUID();
      if ((await redis.set(k.lock, token, 'PX', ttlMs, 'NX')) !== 'OK') return undefined;
      return async () => {
        if ((await redis.get(k.lock)) === token) await redis.del(k.lock);
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
