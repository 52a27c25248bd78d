import { RateLimitedError } from '../core/errors.js';

/** Per-org request admission (rate plan) and durable quotas, spent once for every job that enters. */
export interface AdmissionCheck {
  admit(orgId: string, jobs: number): Promise<{ allowed: true } | { allowed: false; reason: string; retryAfterS: number }>;
}

/** Spends the org's admission for `jobs` jobs; a refusal is a RateLimitedError (429 with Retry-After). */
export async function admitOrThrow(admission: AdmissionCheck | undefined, orgId: string, jobs: number): Promise<void> {
  if (!admission) return;
  const verdict = await admission.admit(orgId, jobs);
  if (!verdict.allowed) throw new RateLimitedError(verdict.reason, verdict.retryAfterS);
}
