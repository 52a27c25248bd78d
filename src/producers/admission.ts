import { LRUCache } from 'lru-cache';
import type { QuotaDecision } from '../shared/infra/db/quotas.js';
import type { AdmissionLimiter } from '../shared/limits/admission-limiter.js';
import type { AdmissionCheck } from '../shared/queue/admission-check.js';

export type { AdmissionCheck } from '../shared/queue/admission-check.js';

/** Jobs of one bulk request that cost one admission point (a request is one point). */
export const JOBS_PER_POINT = 100;

/**
 * API admission, before any expensive work: the org's rate plan (rate-limiter-flexible in Redis), then
 * its durable quotas (Postgres). Plans and quota decisions are remembered briefly per process, so the
 * enqueue path does not query Postgres per request.
 */
export function createAdmission(deps: {
  limiter: AdmissionLimiter;
  planOf: (orgId: string) => Promise<string | undefined>;
  quota: (orgId: string) => Promise<QuotaDecision>;
  defaultPlan: string;
  cacheMs: number;
}): AdmissionCheck {
  const ttl = Math.max(1, deps.cacheMs);
  const plans = new LRUCache<string, { plan: string }>({
    max: 10_000,
    ttl,
    fetchMethod: async (orgId) => {
      const plan = (await deps.planOf(orgId)) ?? deps.defaultPlan;
      return { plan: plan in deps.limiter.plans ? plan : deps.defaultPlan };
    },
  });
  const quotas = new LRUCache<string, QuotaDecision>({ max: 10_000, ttl, fetchMethod: (orgId) => deps.quota(orgId) });
  return {
    async admit(orgId, jobs) {
      const { plan } = (await plans.fetch(orgId))!;
      const verdict = await deps.limiter.consume(orgId, plan, Math.max(1, Math.ceil(jobs / JOBS_PER_POINT)));
      if (!verdict.allowed) return { allowed: false, reason: `rate limit exceeded (plan ${plan})`, retryAfterS: verdict.retryAfterS };
      return deps.cacheMs > 0 ? (await quotas.fetch(orgId))! : deps.quota(orgId);
    },
  };
}
