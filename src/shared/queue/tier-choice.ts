import { SERVICE_TIERS, type ServiceTier } from '../core/types.js';
import { ValidationError } from '../core/errors.js';

/** Every tier a job can ask for: the online ones, and batch (collected per model into Gemini Batch Mode). */
export const JOB_TIERS = SERVICE_TIERS;

export interface TierPolicy {
  /**
   * Flex is best effort (Gemini may shed it or answer slower): chosen for a deadline at least this far away,
   * so a shed or slow flex call still leaves time for a standard one.
   */
  flexMinDeadlineS: number;
  /**
   * Batch Mode targets a 24 h turnaround: chosen for a deadline at least this far away. A job whose batch has
   * not answered near its deadline runs on the standard tier (BATCH_DEADLINE_MARGIN_MS).
   */
  batchMinDeadlineS: number;
  /**
   * A batch-tier job's deadline must leave its batch at least `batchMinTurnaroundS` before the collector's
   * margin (BATCH_DEADLINE_MARGIN_MS, where the job falls back to standard): nearer, it is refused when asked
   * for explicitly and never chosen, since it would pay a batch request and then a standard call.
   */
  batchDeadlineMarginMs?: number;
  batchMinTurnaroundS?: number;
}

export const DEFAULT_TIER_POLICY: TierPolicy = { flexMinDeadlineS: 600, batchMinDeadlineS: 86_400, batchDeadlineMarginMs: 600_000, batchMinTurnaroundS: 3600 };

/**
 * The tier a job runs at: its explicit `tier`, else the cheapest tier that meets its `deadline` (an ISO
 * date-time, or seconds from now), else standard. A deadline already past is refused (nothing can meet it), and
 * so is an explicit batch tier whose deadline leaves its batch no time (`batchMinTurnaroundS`).
 */
export function chooseTier(
  opts: { tier?: ServiceTier; deadline?: string | number },
  now: number,
  policy: TierPolicy = DEFAULT_TIER_POLICY,
  path = 'options.deadline',
): { tier: ServiceTier; deadlineAt?: number } {
  let deadlineAt: number | undefined;
  if (opts.deadline !== undefined) {
    deadlineAt = typeof opts.deadline === 'number' ? now + opts.deadline * 1000 : Date.parse(opts.deadline);
    if (!Number.isFinite(deadlineAt) || deadlineAt <= now) {
      throw new ValidationError('invalid job request', [{ path, message: 'must be in the future' }]);
    }
  }
  const batchFloorMs = (policy.batchDeadlineMarginMs ?? 0) + (policy.batchMinTurnaroundS ?? 0) * 1000;
  if (opts.tier === 'batch' && deadlineAt !== undefined && deadlineAt - now < batchFloorMs) {
    const message = `a batch-tier job's deadline must be at least ${Math.ceil(batchFloorMs / 1000)} s away (BATCH_DEADLINE_MARGIN_MS + BATCH_MIN_TURNAROUND_S)`;
    throw new ValidationError('invalid job request', [{ path, message }]);
  }
  if (opts.tier) return { tier: opts.tier, ...(deadlineAt !== undefined ? { deadlineAt } : {}) };
  if (deadlineAt === undefined) return { tier: 'standard' };
  const leftMs = deadlineAt - now;
  const batchOk = leftMs >= policy.batchMinDeadlineS * 1000 && leftMs >= batchFloorMs;
  const tier: ServiceTier = batchOk ? 'batch' : leftMs >= policy.flexMinDeadlineS * 1000 ? 'flex' : 'standard';
  return { tier, deadlineAt };
}
