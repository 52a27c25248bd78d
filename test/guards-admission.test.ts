import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createAdmissionLimiter, defaultPlans, UnknownPlanError, type AdmissionLimiter } from '../src/shared/limits/admission-limiter.js';
import { randomOrg, randomPrefix, redisUrl } from './helpers/env.js';

describe('admission limiter', () => {
  let redis: Redis;
  let limiter: AdmissionLimiter;
  let prefix: string;

  beforeAll(() => {
    redis = new Redis(redisUrl());
    prefix = randomPrefix();
    limiter = createAdmissionLimiter({ redis, prefix, plans: { tiny: { points: 3, durationS: 60 } } });
  });
  afterAll(async () => {
    await redis.quit();
  });

  it('has the documented default plans', () => {
    expect(limiter.plans.ai_pro).toEqual({ points: 10, durationS: 60 });
    expect(limiter.plans.ai_flash).toEqual({ points: 60, durationS: 60 });
    expect(limiter.plans.general).toEqual({ points: 100, durationS: 1 });
    expect(defaultPlans.ai_pro.points).toBe(10);
  });

  it('allows up to the plan, then rejects with retryAfterS, per org', async () => {
    const org = randomOrg();
    for (let i = 0; i < 3; i++) expect(await limiter.consume(org, 'tiny')).toMatchObject({ allowed: true, remainingPoints: 2 - i });
    const r = await limiter.consume(org, 'tiny');
    expect(r.allowed).toBe(false);
    if (r.allowed) return;
    expect(r.retryAfterS).toBeGreaterThanOrEqual(1);
    expect(r.retryAfterS).toBeLessThanOrEqual(60);
    expect(r.retryAfterS).toBe(Math.ceil(r.msBeforeNext / 1000));
    expect((await limiter.consume(randomOrg(), 'tiny')).allowed).toBe(true);
    // Plans are separate allowances: the same org still has its ai_pro calls.
    expect((await limiter.consume(org, 'ai_pro')).allowed).toBe(true);
  });

  it('keeps its keys under the prefix', async () => {
    const org = randomOrg();
    await limiter.consume(org, 'ai_flash');
    expect(await redis.get(`${prefix}:adm:ai_flash:${org}`)).toBe('1');
  });

  it('lets the caller override a default plan', async () => {
    const strict = createAdmissionLimiter({ redis, prefix: randomPrefix(), plans: { ai_pro: { points: 1, durationS: 60 } } });
    const org = randomOrg();
    expect((await strict.consume(org, 'ai_pro')).allowed).toBe(true);
    expect((await strict.consume(org, 'ai_pro')).allowed).toBe(false);
  });

  it('throws on an unknown plan and rethrows Redis errors instead of admitting', async () => {
    await expect(limiter.consume(randomOrg(), 'platinum')).rejects.toBeInstanceOf(UnknownPlanError);
    const offline = new Redis(redisUrl(), { lazyConnect: true, enableOfflineQueue: false });
    const broken = createAdmissionLimiter({ redis: offline, prefix: randomPrefix() });
    await expect(broken.consume(randomOrg(), 'general')).rejects.toThrow(/writeable|offline|connection/i);
    offline.disconnect();
  });
});
