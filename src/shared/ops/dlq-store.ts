import type { Job } from 'bullmq';
import type { RedisClient } from '../infra/redis/connection.js';
import { defineLua } from '../infra/lua.js';
import type { AgentQueue } from '../queue/agent-queue.js';
import type { AgentJobData, AgentResult } from '../core/types.js';
import { classifyFailedJob, type Classification, type DlqClass, type FailureType } from '../core/dlq-classify.js';
import { agentJobKey, batchKeys, cancelRequestedKey, dlqMetaKey, jobStreamKey, parentChildrenKeys, usageStreamKey, waitingChildrenKey } from '../core/queue-keys.js';
import { RUN_FIELD } from '../infra/db/run-stream.js';
import { injectTrace } from '../telemetry/tracing.js';

type AgentJob = Job<AgentJobData, AgentResult>;

/** One job of the dead-letter queue (BullMQ's failed set of the agent queue) as the API shows it. */
export interface DlqEntry {
  id: string;
  orgId: string;
  agent: string;
  action: string;
  model?: string;
  class: DlqClass;
  type: FailureType;
  reason: string;
  failedAt: string;
  attempts: number;
  /** Times the DLQ retried it (scheduled or by hand); kept when a retried job fails again. */
  dlqRetries: number;
  lastError?: string;
  lastRetryAt?: string;
  requestId?: string;
}

export interface DlqItem {
  entry: DlqEntry;
  job: AgentJob;
  /** Where a scan found it in the failed set (absent from `get`). */
  position?: DlqCursor;
}

/** Position in the failed set: its score (failure time) and the member, since scores tie. */
export interface DlqCursor {
  score: number;
  id: string;
}

/**
 * Why a retry was refused (the job, the entry and its keys untouched): `not_failed` it left the failed set (or
 * is gone); `claimed_elsewhere` it changed since it was read (its retry count moved on: retried meanwhile and
 * failed again; or a retry by a process of the previous version is under way); `parent_finished` a flow child
 * or pipeline step whose parent (flow, run) no longer waits for it.
 */
export type RetryRefusal = 'not_failed' | 'claimed_elsewhere' | 'limit_reached' | 'other_class' | 'parent_finished';
const REFUSALS: Record<number, RetryRefusal> = { [-1]: 'not_failed', [-2]: 'claimed_elsewhere', [-3]: 'limit_reached', [-4]: 'other_class', [-5]: 'parent_finished' };

export const encodeCursor = (c: DlqCursor) => Buffer.from(`${c.score}:${c.id}`).toString('base64url');
export function decodeCursor(raw: string): DlqCursor | undefined {
  const text = Buffer.from(raw, 'base64url').toString('utf8');
  const at = text.indexOf(':');
  const score = Number(text.slice(0, at));
  return at > 0 && Number.isFinite(score) && at < text.length - 1 ? { score, id: text.slice(at + 1) } : undefined;
}

/**
 * DLQ bookkeeping next to BullMQ's failed set: one small hash per entry (`<prefix>:agentq:dlq:<id>`) holds
 * its class and the DLQ retry count, last error and last retry time, so every process reads the same
 * numbers. The hash outlives a retry on purpose (the count must survive a job failing again) and expires
 * with the failed-job retention.
 */
export function createDlqStore(deps: { redis: RedisClient; queue: AgentQueue; prefix: string; ttlS: number }) {
  const { redis, queue } = deps;
  const failedKey = queue.keys.failed;
  const metaKey = (id: string) => dlqMetaKey(deps.prefix, id);
  const retryLua = defineLua(redis, 'dlq-retry-N.lua');
  const recordLua = defineLua(redis, 'dlq-record-1.lua');
  const batch = batchKeys(deps.prefix);

  function toEntry(job: AgentJob, stored: Record<string, string>): DlqEntry {
    // A meta hash of another incarnation of this id (a job removed outside the DLQ) is that job's, not this one's.
    const meta = stored.ts !== undefined && stored.ts !== String(job.timestamp) ? {} : stored;
    const lazy: Classification | undefined = meta.class && meta.type ? undefined : classifyFailedJob(job);
    const data = job.data ?? ({} as AgentJobData);
    return {
      id: job.id!,
      orgId: data.orgId,
      agent: data.agent,
      action: data.action,
      ...(data.model ? { model: data.model } : {}),
      class: (meta.class as DlqClass | undefined) ?? lazy!.class,
      type: (meta.type as FailureType | undefined) ?? lazy!.type,
      reason: job.failedReason ?? meta.reason ?? '',
      failedAt: new Date(job.finishedOn ?? Number(meta.failedAt ?? 0)).toISOString(),
      attempts: job.attemptsMade,
      dlqRetries: Number(meta.retries ?? 0),
      ...(meta.lastError ? { lastError: meta.lastError } : {}),
      ...(meta.lastRetryAt ? { lastRetryAt: new Date(Number(meta.lastRetryAt)).toISOString() } : {}),
      ...(data.requestId ? { requestId: data.requestId } : {}),
    };
  }

  /**
   * The jobs and their meta hashes, read side by side (one round trip's wait). With `failedOnly`, a job not in the
   * failed set is none, read with the metas: `get` took a round trip of its own for it before (Bull Board's retry of a
   * failed job: 3 round trips one after another, now 2 with the retry's script, which checks the set again).
   */
  async function load(ids: string[], opts: { failedOnly?: boolean } = {}): Promise<Array<DlqItem | undefined>> {
    if (ids.length === 0) return [];
    const pipe = redis.pipeline();
    for (const id of ids) {
      if (opts.failedOnly) pipe.zscore(failedKey, id);
      pipe.hgetall(metaKey(id));
    }
    const [replies, jobs] = await Promise.all([pipe.exec(), Promise.all(ids.map((id) => queue.getJob(id)))]);
    const per = opts.failedOnly ? 2 : 1;
    return ids.map((_, i) => {
      const job = jobs[i];
      if (!job) return undefined;
      if (opts.failedOnly) {
        const [err, score] = replies?.[i * per] ?? [new Error('no reply')];
        if (err) throw err;
        if (score === null) return undefined;
      }
      return { job, entry: toEntry(job, (replies?.[i * per + per - 1]?.[1] as Record<string, string>) ?? {}) };
    });
  }

  /**
   * Walks the failed set oldest first from `after`, in chunks. Equal scores are ordered by member, so
   * (score, id) is a stable position; entries removed meanwhile may shift a chunk, which only matters to
   * a page being read while the set changes.
   */
  async function* walk(after?: DlqCursor, chunk = 200): AsyncGenerator<DlqCursor[]> {
    let min = after ? String(after.score) : '-inf';
    let offset = 0;
    for (;;) {
      const raw = await redis.zrange(failedKey, min, '+inf', 'BYSCORE', 'LIMIT', offset, chunk, 'WITHSCORES');
      const page: DlqCursor[] = [];
      for (let i = 0; i < raw.length; i += 2) page.push({ id: raw[i], score: Number(raw[i + 1]) });
      const fresh = after ? page.filter((p) => p.score > after.score || (p.score === after.score && p.id > after.id)) : page;
      if (fresh.length) yield fresh;
      if (page.length < chunk) return;
      const last = page[page.length - 1].score;
      const ties = page.filter((p) => p.score === last).length;
      // A chunk of one score all over: step past it with the offset, or the same chunk would come back.
      offset = String(last) === min ? offset + ties : ties;
      min = String(last);
    }
  }

  return {
    metaKey,
    failedKey,

    /** Stores the class of a job that just failed for good; returns its DLQ retry count so far. */
    async recordFailure(job: AgentJob, c: Classification, reason: string): Promise<number> {
      const args = [job.timestamp, c.class, c.type, reason.slice(0, 2000), job.finishedOn ?? Date.now(), deps.ttlS];
      return Number(await recordLua([metaKey(job.id!)], args));
    },

    /** The entry of one job, or undefined when the job is not in the failed set. */
    async get(id: string): Promise<DlqItem | undefined> {
      return (await load([id], { failedOnly: true }))[0];
    },

    /**
     * Up to `limit` entries passing `filter`, oldest first after `after`, looking at no more than `maxScan`
     * raw entries; `next` is where to continue (absent once the set is exhausted).
     */
    async scan(opts: { after?: DlqCursor; filter: (e: DlqEntry) => boolean; limit: number; maxScan?: number }): Promise<{ items: DlqItem[]; next?: DlqCursor }> {
      const items: DlqItem[] = [];
      let scanned = 0;
      const maxScan = opts.maxScan ?? 5000;
      for await (const positions of walk(opts.after)) {
        const loaded = await load(positions.map((p) => p.id));
        for (let i = 0; i < positions.length; i++) {
          scanned++;
          const item = loaded[i];
          if (item && opts.filter(item.entry)) items.push({ ...item, position: positions[i] });
          if (items.length >= opts.limit || scanned >= maxScan) return { items, next: positions[i] };
        }
      }
      return { items };
    },

    /**
     * Retries `item` if nobody else did first: counts the retry, writes `input` into the job and moves the job
     * back to wait with its attempts kept (BullMQ's retry), in one script call (dlq-retry-N.lua). Refused, or
     * failed with a Redis error before the script ran, it changed nothing; there is no step after the claim
     * that could fail and leave it half done. With `input`, the job's batch-tier request or answer (the old
     * input's) is cancelled in the same step. Returns the new count or why it was refused.
     * Asked inside a span (the API's or Bull Board's request), the retry's attempts continue that span's trace, as
     * an enqueue's do: its context replaces the job's `data.trace`. Outside one (the scheduled reprocessor, or
     * tracing unset) the job keeps the trace it had.
     */
    async retry(item: DlqItem, opts: { maxRetries?: number; requireClass?: DlqClass; input?: unknown }): Promise<number | RetryRefusal> {
      const { entry, job } = item;
      const trace = injectTrace();
      const newInput = opts.input !== undefined;
      const data = newInput || trace ? JSON.stringify({ ...job.data, ...(newInput ? { input: opts.input } : {}), ...(trace ? { trace } : {}) }) : '';
      const k = queue.keys;
      // The record's model names its pending set: a failed job runs nowhere, so nothing replaces the record
      // before the retry (only the job's own attempt records one).
      const model = data ? await redis.hget(batch.job(entry.id), 'model') : null;
      const keys = [metaKey(entry.id), failedKey, agentJobKey(deps.prefix, entry.id), cancelRequestedKey(deps.prefix, entry.id), jobStreamKey(deps.prefix, entry.id)];
      keys.push(k.wait, k.meta, k.active, k.marker, k.prioritized, k.pc, k.events, batch.job(entry.id), batch.queue(model ?? ''), usageStreamKey(deps.prefix));
      const { parent, parentKey } = job;
      if (parent && parentKey) {
        const children = parentChildrenKeys(parentKey);
        keys.push(parentKey, waitingChildrenKey(parent.queueKey), children.unsuccessful, children.failed, children.dependencies);
      }
      const push = job.opts.lifo ? 'RPUSH' : 'LPUSH';
      const res = Number(
        await retryLua(keys, [entry.id, entry.dlqRetries, opts.maxRetries ?? -1, opts.requireClass ?? '', entry.class, entry.reason.slice(0, 2000), Date.now(), deps.ttlS, data, push, parent?.id ?? '', job.timestamp, RUN_FIELD, newInput ? '' : '1']),
      );
      return res >= 0 ? res : REFUSALS[res];
    },

    async remove(item: DlqItem): Promise<void> {
      await item.job.remove();
      // The cancel marker too: a job of the same id added later (an idempotency key sent again) is not that run.
      await redis.del(metaKey(item.entry.id), cancelRequestedKey(deps.prefix, item.entry.id));
    },
  };
}

/** What the DLQ service, reprocessor and worker listeners use of a store (one shard's, or all of them). */
export type DlqStore = Pick<ReturnType<typeof createDlqStore>, 'recordFailure' | 'get' | 'scan' | 'retry' | 'remove'>;
