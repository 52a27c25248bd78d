import { LRUCache } from 'lru-cache';
import type { OrgQuotas } from '../shared/infra/db/quotas.js';
import type { AdmissionLimiter } from '../shared/limits/admission-limiter.js';
import { utcDayOf, type DailyJobLedger } from '../shared/limits/daily-jobs.js';
import type { AdmissionCheck } from '../shared/queue/admission-check.js';

export type { AdmissionCheck } from '../shared/queue/admission-check.js';

/** Jobs of one bulk request that cost one admission point (a request is one point). */
export const JOBS_PER_POINT = 100;

/**
 * API admission, before any expensive work: the org's rate plan (rate-limiter-flexible in Redis), its monthly
 * budget (Postgres), then its daily job limit: the request's new jobs are reserved in Redis (`dailyJobs`, one
 * atomic call), so no burst, bulk or number of API processes admits more than the limit in a UTC day; jobs
 * admitted are never refused later by it (retries and replays are not new jobs). Plans, the budget's decision
 * and the daily limit are remembered briefly per process, so the enqueue path does not query Postgres per
 * request; the reservation is never cached.
 */
export function createAdmission(deps: {
  limiter: AdmissionLimiter;
  planOf: (orgId: string) => Promise<string | undefined>;
  /** The org's quotas, the daily part for the UTC day starting at `dayStartMs`. */
  quota: (orgId: string, dayStartMs: number) => Promise<OrgQuotas>;
  /** The daily job counts of the org's queue shard. */
  dailyJobs: (orgId: string) => DailyJobLedger;
  defaultPlan: string;
  cacheMs: number;
  now?: () => number;
}): AdmissionCheck {
  const ttl = Math.max(1, deps.cacheMs);
  const now = deps.now ?? Date.now;
  const plans = new LRUCache<string, { plan: string }>({
    max: 10_000,
    ttl,
    fetchMethod: async (orgId) => {
      const plan = (await deps.planOf(orgId)) ?? deps.defaultPlan;
      return { plan: plan in deps.limiter.plans ? plan : deps.defaultPlan };
    },
  });
  const quotas = new LRUCache<string, OrgQuotas>({ max: 10_000, ttl, fetchMethod: (orgId) => deps.quota(orgId, utcDayOf(now()).startMs) });
  return {
    async admit(orgId, jobs, newJobs = jobs) {
      const { plan } = (await plans.fetch(orgId))!;
      const verdict = await deps.limiter.consume(orgId, plan, Math.max(1, Math.ceil(jobs / JOBS_PER_POINT)));
      if (!verdict.allowed) return { allowed: false, kind: 'rate_limit', reason: `rate limit exceeded (plan ${plan})`, retryAfterS: verdict.retryAfterS };
      const q = deps.cacheMs > 0 ? (await quotas.fetch(orgId))! : await deps.quota(orgId, utcDayOf(now()).startMs);
      if (!q.budget.allowed) return { ...q.budget, kind: 'quota' };
      if (!q.daily || newJobs <= 0) return { allowed: true };
      const at = now();
      const day = utcDayOf(at);
      // A floor read before midnight counted yesterday's jobs: not today's.
      const floor = q.daily.dayStartMs === day.startMs ? q.daily.recorded : 0;
      const { limit } = q.daily;
      const r = await deps.dailyJobs(orgId).reserve(orgId, day, newJobs, limit, floor);
      if (!r.reserved) {
        return {
          allowed: false,
          kind: 'quota',
          reason: `daily job limit of ${limit} reached: ${r.count} jobs admitted today (UTC), this request adds ${newJobs}`,
          retryAfterS: Math.max(1, Math.ceil((day.endMs - at) / 1000)),
          details: { limit, jobsToday: r.count, requested: newJobs },
        };
      }
      return { allowed: true, reserved: { jobs: newJobs, day: day.name } };
    },
    async refund(orgId, reserved, jobs) {
      await deps.dailyJobs(orgId).refund(orgId, reserved.day, Math.min(jobs, reserved.jobs));
    },
  };
}
