import { LRUCache } from 'lru-cache';
import type { QuotaDecision } from '../shared/infra/db/quotas.js';
import type { AdmissionLimiter } from '../shared/limits/admission-limiter.js';
import { HttpError, withDeadline } from './http-errors.js';

export interface AdmissionCheck {
  /** Per-org request admission (token bucket) and durable quotas; a refusal becomes a 429. */
  admit(orgId: string, jobs: number): Promise<{ allowed: true } | { allowed: false; reason: string; retryAfterS: number }>;
}

/** Spends the org's admission for `jobs` jobs; a refusal is a 429 with Retry-After. */
export async function admitOrThrow(admission: AdmissionCheck | undefined, orgId: string, jobs: number, deadlineMs = 1000): Promise<void> {
  if (!admission) return;
  const verdict = await withDeadline(admission.admit(orgId, jobs), deadlineMs, 'rate limiter');
  if (!verdict.allowed) {
    throw new HttpError(429, verdict.reason, { retryAfter: verdict.retryAfterS }, { 'retry-after': String(verdict.retryAfterS) });
  }
}

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
  const plans = new LRUCache<string, { plan: string }>({ max: 10_000, ttl });
  const quotas = new LRUCache<string, QuotaDecision>({ max: 10_000, ttl });
  return {
    async admit(orgId, jobs) {
      let plan = plans.get(orgId)?.plan;
      if (!plan) {
        plan = (await deps.planOf(orgId)) ?? deps.defaultPlan;
        if (!(plan in deps.limiter.plans)) plan = deps.defaultPlan;
        plans.set(orgId, { plan });
      }
      const verdict = await deps.limiter.consume(orgId, plan, Math.max(1, Math.ceil(jobs / JOBS_PER_POINT)));
      if (!verdict.allowed) return { allowed: false, reason: `rate limit exceeded (plan ${plan})`, retryAfterS: verdict.retryAfterS };
      let quota = deps.cacheMs > 0 ? quotas.get(orgId) : undefined;
      if (!quota) {
        quota = await deps.quota(orgId);
        quotas.set(orgId, quota);
      }
      return quota;
    },
  };
}
