import type { ServiceTier } from '../core/types.js';
import { ValidationError } from '../core/errors.js';

/** The tiers a job can ask for today. Batch Mode needs the batch collector (issue 15, not built yet). */
export const ONLINE_TIERS = ['standard', 'flex', 'priority'] as const satisfies readonly ServiceTier[];
export type OnlineTier = (typeof ONLINE_TIERS)[number];

export interface TierPolicy {
  /**
   * Flex is best effort (Gemini may shed it or answer slower): chosen for a deadline at least this far away,
   * so a shed or slow flex call still leaves time for a standard one.
   */
  flexMinDeadlineS: number;
}

export const DEFAULT_TIER_POLICY: TierPolicy = { flexMinDeadlineS: 600 };

/**
 * The tier a job runs at: its explicit `tier`, else the cheapest tier that meets its `deadline` (an ISO
 * date-time, or seconds from now), else standard. A deadline already past is refused (nothing can meet it).
 */
export function chooseTier(
  opts: { tier?: OnlineTier; deadline?: string | number },
  now: number,
  policy: TierPolicy = DEFAULT_TIER_POLICY,
  path = 'options.deadline',
): { tier: OnlineTier; deadlineAt?: number } {
  let deadlineAt: number | undefined;
  if (opts.deadline !== undefined) {
    deadlineAt = typeof opts.deadline === 'number' ? now + opts.deadline * 1000 : Date.parse(opts.deadline);
    if (!Number.isFinite(deadlineAt) || deadlineAt <= now) {
      throw new ValidationError('invalid job request', [{ path, message: 'must be in the future' }]);
    }
  }
  if (opts.tier) return { tier: opts.tier, ...(deadlineAt !== undefined ? { deadlineAt } : {}) };
  if (deadlineAt === undefined) return { tier: 'standard' };
  const tier: OnlineTier = deadlineAt - now >= policy.flexMinDeadlineS * 1000 ? 'flex' : 'standard';
  return { tier, deadlineAt };
}
