import { ReplyError } from 'ioredis';
import { RateLimitedError } from '../core/errors.js';

/** New jobs one admitted request reserved against its org's daily job limit, on the UTC day named `day`. */
export interface DailyReservation {
  jobs: number;
  day: string;
}

export type AdmissionVerdict =
  | { allowed: true; reserved?: DailyReservation }
  /**
   * `kind`: what refused it (the metrics' label: counted by kind, never by the reason's wording); `details`:
   * fields the 429 body adds (the daily job limit's `limit`, `jobsToday`, `requested`).
   */
  | { allowed: false; kind: AdmissionRefusal; reason: string; retryAfterS: number; details?: Record<string, number> };

/** What refused a request: its org's rate plan, or a durable quota (the monthly budget, the daily job limit). */
export type AdmissionRefusal = 'rate_limit' | 'quota';

/** Per-org request admission (rate plan) and durable quotas, spent once for every job that enters. */
export interface AdmissionCheck {
  /**
   * `jobs`: the request's jobs (its rate-plan cost); `newJobs` (default `jobs`): those of them that would be new
   * jobs, reserved against the org's daily job limit (an idempotent re-send of an existing job is not one).
   */
  admit(orgId: string, jobs: number, newJobs?: number): Promise<AdmissionVerdict>;
  /**
   * Gives back `jobs` of `reserved` that turned out not to be new (a duplicate stored by a racing request) or
   * were never stored (`refundFailedAdd`).
   */
  refund?(orgId: string, reserved: DailyReservation, jobs: number): Promise<void>;
}

/**
 * Spends the org's admission for `jobs` jobs, `newJobs` of them new; a refusal is a RateLimitedError (429 with
 * Retry-After). Returns the daily reservation taken, if any.
 */
export async function admitOrThrow(admission: AdmissionCheck | undefined, orgId: string, jobs: number, newJobs = jobs): Promise<DailyReservation | undefined> {
  if (!admission) return undefined;
  const verdict = await admission.admit(orgId, jobs, newJobs);
  if (!verdict.allowed) throw new RateLimitedError(verdict.reason, verdict.retryAfterS, verdict.details);
  return verdict.reserved;
}

/**
 * Gives back the daily reservation of an add that failed for certain, so the org's day is not charged for jobs
 * never created: Redis answered the add with an error (a ReplyError: a script's refusal, OOM, WRONGTYPE), or it
 * failed before anything was sent (`sent` false). A script is not rolled back by its error, so only the jobs that
 * are not stored now (`unstored`, read after the error) are given back: the ones it stored before failing are
 * jobs (parked, the orphan sweep lanes them). Any other failure (a timeout, a lost connection: ioredis may send the
 * command again, the add may still land) keeps the reservation, as does a failed read or refund: the day's count
 * stays high, never low.
 */
export async function refundFailedAdd(
  admission: AdmissionCheck | undefined,
  orgId: string,
  reserved: DailyReservation | undefined,
  err: unknown,
  o: { sent: boolean; unstored: () => Promise<number> },
): Promise<void> {
  if (!reserved || !admission?.refund) return;
  if (o.sent && !(err instanceof ReplyError)) return;
  try {
    const jobs = o.sent ? await o.unstored() : reserved.jobs;
    if (jobs > 0) await admission.refund(orgId, reserved, jobs);
  } catch {
    // The reservation stays: the day's count is high by these jobs, never low.
  }
}
