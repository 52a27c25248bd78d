import { defineLua, type RedisClient } from '../infra/lua.js';
import { guardKeys } from '../core/queue-keys.js';
import type { UtcDay } from '../core/utc-day.js';

/**
 * A day's count outlives the day by this much: an API process whose clock runs behind still reserves on it for a
 * moment after midnight, and must find it, not a fresh key.
 */
const DAY_KEY_GRACE_MS = 3_600_000;

export { utcDayOf, type UtcDay } from '../core/utc-day.js';

export interface DailyJobLedger {
  /**
   * Reserves `jobs` new jobs of `orgId` on `day` if the day's count stays within `limit`, all or none, atomically
   * across processes. `floor`: the jobs of that day already known durably (agent_runs); the count is taken as at
   * least that. `count`: the day's count after the call (refused: as it stands).
   */
  reserve(orgId: string, day: UtcDay, jobs: number, limit: number, floor: number): Promise<{ reserved: boolean; count: number }>;
  /** Gives back `jobs` reserved on the day named `dayName` that turned out not to be new jobs. */
  refund(orgId: string, dayName: string, jobs: number): Promise<void>;
}

/** The per-org daily job counts of one queue shard (`prefix`: its agentq prefix), in `daily-jobs-1.lua`. */
export function createDailyJobLedger(opts: { redis: RedisClient; prefix: string }): DailyJobLedger {
  const lua = defineLua(opts.redis, 'daily-jobs-1.lua');
  return {
    async reserve(orgId, day, jobs, limit, floor) {
      const [ok, count] = (await lua([guardKeys.dailyJobs(opts.prefix, orgId, day.name)], [jobs, limit, floor, day.endMs + DAY_KEY_GRACE_MS])) as [number, number];
      return { reserved: ok === 1, count };
    },
    async refund(orgId, dayName, jobs) {
      if (jobs > 0) await lua([guardKeys.dailyJobs(opts.prefix, orgId, dayName)], [-jobs, 0, 0, 0]);
    },
  };
}
