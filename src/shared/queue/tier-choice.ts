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
   * Batch Mode targets a 24 h turnaround: chosen for a deadline at least this far away. A batch that has not
   * answered near the deadline is cancelled and its jobs run on the standard tier (BATCH_DEADLINE_MARGIN_MS).
   */
  batchMinDeadlineS: number;
}

export const DEFAULT_TIER_POLICY: TierPolicy = { flexMinDeadlineS: 600, batchMinDeadlineS: 86_400 };

/**
 * The tier a job runs at: its explicit `tier`, else the cheapest tier that meets its `deadline` (an ISO
 * date-time, or seconds from now), else standard. A deadline already past is refused (nothing can meet it).
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
  if (opts.tier) return { tier: opts.tier, ...(deadlineAt !== undefined ? { deadlineAt } : {}) };
  if (deadlineAt === undefined) return { tier: 'standard' };
  const leftMs = deadlineAt - now;
  const tier: ServiceTier = leftMs >= policy.batchMinDeadlineS * 1000 ? 'batch' : leftMs >= policy.flexMinDeadlineS * 1000 ? 'flex' : 'standard';
  return { tier, deadlineAt };
}
