import type { RedisClient } from '../infra/redis/connection.js';
import { defineLua } from '../infra/lua.js';
import { cancelledKey } from '../core/cancel.js';
import { fairPrefixes, orgJobsKey } from '../core/queue-keys.js';
import { fairJobPrefix } from '../fair/fair-keys.js';
import { PARK_SCORE_MIN } from '../fair/park.js';

/** Longest a job can matter to a listing: the longest delay (30 days) plus failed-job retention (14 days). */
export const ORG_INDEX_AGE_S = 45 * 24 * 3600;
/** One add in this many also trims the index by age: amortised, instead of one extra command per job. */
const TRIM_ONE_IN = 64;

export interface IndexedJob {
  id: string;
  /** Enqueue time (ms): the index's score and the `since` filter's reference. */
  at: number;
}

/**
 * Appends to an org's job index. `client` is the queue's connection: the ZADD is sent right alongside the
 * job's own add (BullMQ does not let other commands into its add pipeline), so it costs no extra wait.
 */
export function createOrgJobIndexWriter(o: { client: () => Promise<RedisClient>; prefix: string; ageS?: number; random?: () => number }) {
  const ageS = o.ageS ?? ORG_INDEX_AGE_S;
  const random = o.random ?? Math.random;
  return {
    /**
     * The amortised trim alone, for jobs whose index entry another call wrote (the fair dispatcher's enqueue
     * script adds it in the call it makes anyway): one call in TRIM_ONE_IN trims, the others send nothing.
     */
    async trim(orgId: string): Promise<void> {
      if (random() * TRIM_ONE_IN >= 1) return;
      const client = await o.client();
      await client.zremrangebyscore(orgJobsKey(o.prefix, orgId), '-inf', Date.now() - ageS * 1000);
    },
    async add(orgId: string, jobs: IndexedJob[]): Promise<void> {
      if (jobs.length === 0) return;
      const client = await o.client();
      const key = orgJobsKey(o.prefix, orgId);
      const args: Array<string | number> = [];
      for (const j of jobs) args.push(j.at, j.id);
      // NX: an idempotent re-enqueue keeps the original enqueue time.
      if (random() * TRIM_ONE_IN >= 1) {
        await client.zadd(key, 'NX', ...args);
        return;
      }
      await client
        .multi()
        .zadd(key, 'NX', ...args)
        .zremrangebyscore(key, '-inf', Date.now() - ageS * 1000)
        .exec();
    },
  };
}

export interface QueueKeys {
  /** The job hash key prefix (BullMQ `queue.keys['']`). */
  job: string;
  completed: string;
  failed: string;
  delayed: string;
  prioritized: string;
  waitingChildren: string;
  active: string;
}

export interface ListFilter {
  state?: string;
  agent?: string;
  /** Only jobs enqueued at or after this time (ms). */
  sinceMs?: number;
}

export interface JobRow {
  id: string;
  state: string;
  name?: string;
  progress?: string;
  returnvalue?: string;
  failedReason?: string;
  attemptsMade?: string;
  timestamp?: string;
  finishedOn?: string;
  /** JSON of the cancelled-job tombstone, for a job removed before it ran. */
  tombstone?: string;
}


/**
 * Reads an org's jobs newest first, one Lua call per page. The cursor is (score, last member read), so pages
 * neither repeat nor skip jobs as new ones arrive, old ones are trimmed, or jobs already listed leave the index
 * between two pages (job-list-page-7.lua). The cursor never leaves this generator (one listing's pages, in one
 * process), so no cursor of the earlier form (score, members seen at it) can reach the script.
 */
export function createOrgJobIndexReader(o: { redis: RedisClient; prefix: string; keys: QueueKeys; ageS?: number }) {
  const pageLua = defineLua(o.redis, 'job-list-page-7.lua');
  const ageS = o.ageS ?? ORG_INDEX_AGE_S;
  const k = o.keys;

  return {
    async *pages(orgId: string, filter: ListFilter, pageSize: number): AsyncGenerator<JobRow[]> {
      const key = orgJobsKey(o.prefix, orgId);
      await o.redis.zremrangebyscore(key, '-inf', Date.now() - ageS * 1000);
      let max = '+inf';
      let last = '';
      const min = filter.sinceMs === undefined ? '-inf' : String(filter.sinceMs);
      for (;;) {
        const [nextMax, nextLast, scanned, rows] = (await pageLua(
          [key, k.completed, k.failed, k.delayed, k.prioritized, k.waitingChildren, k.active],
          [k.job, cancelledKey(o.prefix, ''), max, min, last, pageSize, filter.state ?? '', filter.agent ? `${filter.agent}:` : '', PARK_SCORE_MIN, fairJobPrefix(fairPrefixes(o.prefix).keyPrefix)],
        )) as [string, string, number, Array<Array<string | null>>];
        if (rows.length > 0) {
          yield rows.map((r) => ({
            id: r[0]!,
            state: r[1]!,
            name: r[2] ?? undefined,
            progress: r[3] ?? undefined,
            returnvalue: r[4] ?? undefined,
            failedReason: r[5] ?? undefined,
            attemptsMade: r[6] ?? undefined,
            timestamp: r[7] ?? undefined,
            finishedOn: r[8] ?? undefined,
            tombstone: r[9] ?? undefined,
          }));
        }
        if (scanned < pageSize) return;
        max = nextMax;
        last = nextLast;
      }
    },
  };
}

export type OrgJobIndexReader = ReturnType<typeof createOrgJobIndexReader>;
