import { RateLimiterRedis, RateLimiterRes } from 'rate-limiter-flexible';
import { AgentqError } from '../core/errors.js';
import type { RedisClient } from '../infra/lua.js';
import { guardKeys } from '../core/queue-keys.js';

export interface AdmissionPlan {
  /** Requests allowed per `durationS`. */
  points: number;
  durationS: number;
}

/** The plans of the API document: Pro-model calls 10/min, Flash-model calls 60/min, everything else 100/s. */
export const defaultPlans = {
  ai_pro: { points: 10, durationS: 60 },
  ai_flash: { points: 60, durationS: 60 },
  general: { points: 100, durationS: 1 },
} satisfies Record<string, AdmissionPlan>;

export type AdmissionResult = { allowed: true; remainingPoints: number } | { allowed: false; retryAfterS: number; msBeforeNext: number };

export class UnknownPlanError extends AgentqError {
  constructor(plan: string) {
    super(`unknown rate limit plan "${plan}"`, 'EUNKNOWNPLAN');
  }
}

export interface AdmissionLimiter {
  /** Spends `points` of `orgId`'s allowance in `plan`; the caller picks the plan per org and route. */
  consume(orgId: string, plan: string, points?: number): Promise<AdmissionResult>;
  readonly plans: Readonly<Record<string, AdmissionPlan>>;
}

/**
 * API admission per org with rate-limiter-flexible's `RateLimiterRedis` (fixed windows, one atomic
 * INCR script per call). `plans` overrides or adds plans; a refusal is a result, while a Redis error
 * is thrown so the API answers 503 instead of letting everything through.
 */
export function createAdmissionLimiter(opts: { redis: RedisClient; prefix: string; plans?: Record<string, AdmissionPlan> }): AdmissionLimiter {
  const plans: Record<string, AdmissionPlan> = { ...defaultPlans, ...opts.plans };
  const limiters = new Map<string, RateLimiterRedis>();
  for (const [name, plan] of Object.entries(plans)) {
    limiters.set(
      name,
      new RateLimiterRedis({ storeClient: opts.redis, keyPrefix: guardKeys.admission(opts.prefix, name), points: plan.points, duration: plan.durationS }),
    );
  }
  return {
    plans,
    async consume(orgId, plan, points = 1) {
      const limiter = limiters.get(plan);
      if (!limiter) throw new UnknownPlanError(plan);
      try {
        const res = await limiter.consume(orgId, points);
        return { allowed: true, remainingPoints: res.remainingPoints };
      } catch (rejection) {
        if (!(rejection instanceof RateLimiterRes)) throw rejection;
        return { allowed: false, msBeforeNext: rejection.msBeforeNext, retryAfterS: Math.max(1, Math.ceil(rejection.msBeforeNext / 1000)) };
      }
    },
  };
}
