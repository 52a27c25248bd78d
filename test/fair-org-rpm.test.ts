import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { createDispatchLoop } from '../src/shared/fair/dispatch-loop.js';
import { createFairScheduler, type FairScheduler, type FairSchedulerOptions } from '../src/shared/fair/fair-scheduler.js';
import { parkedJobOptions } from '../src/shared/fair/park.js';
import { agentqPrefix, fairPrefixes } from '../src/shared/core/queue-keys.js';
import { defaultModelLimits, modelLimitsFromConfig } from '../src/shared/limits/model-limits.js';
import { tierOf } from '../src/shared/fair/fair-plan.js';
import { OpenCircuitError } from '../src/shared/limits/circuit-breaker.js';
import { createTokenBuckets } from '../src/shared/limits/token-bucket.js';
import { createFairGate } from '../src/workers/fair-gate.js';
import { createRateLimitGuard } from '../src/workers/guards/rate-limit-guard.js';
import { DelayJobError, type JobContext } from '../src/workers/middleware.js';
import { guardContext, okResult } from './helpers/guard-context.js';
import { randomOrg, randomPrefix, redisUrl } from './helpers/env.js';

const FLASH = 'gemini-2.5-flash';

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

let seq = 0;
/**
 * One queue shard as the runtime lays it out (app/cell.ts, guards/index.ts): the dispatcher's buckets and the
 * worker's rate limiter under the same prefix, the limiter built from MODEL_LIMITS (none set: 200 RPM per org on
 * a flash model), the org's request of a call no dispatch charged taken through the fair gate (processor.ts).
 */
async function setup(over: Partial<FairSchedulerOptions> = {}) {
  const prefix = randomPrefix();
  const redis = new Redis(redisUrl(), { maxRetriesPerRequest: null });
  const queue = new Queue('fair', { connection: redis, prefix });
  cleanups.push(() => redis.quit());
  cleanups.push(() => queue.close());
  const scheduler: FairScheduler = createFairScheduler({
    redis,
    queue,
    ...fairPrefixes(prefix),
    defaults: { weight: 1, concurrency: 0, rpm: { pro: 30, flash: 200 }, tpm: 0 },
    modelLimits: () => ({}),
    leaseMs: 60_000,
    bufferTarget: 100_000,
    ...over,
  });
  const loop = createDispatchLoop({ scheduler, safetyPollMs: 60_000 });
  cleanups.push(() => loop.close());
  const logger = pino({ level: 'silent' });
  const gate = createFairGate({ scheduler, loop, logger, entryOf: () => ({ jobId: 'x', orgId: 'x', model: FLASH, estTokens: 0 }) });
  cleanups.push(() => gate.close());
  const guard = createRateLimitGuard({ buckets: createTokenBuckets({ redis, prefix: agentqPrefix(prefix) }), limits: modelLimitsFromConfig({}) });
  /** The context of a call no dispatch charged (a fallback model, a retry within the route), as the processor builds it. */
  const uncharged = (orgId: string, model = FLASH): JobContext =>
    guardContext({ orgId, model, estimatedTokens: 0, charge: (m, d) => gate.correct(orgId, m, d), orgRequests: gate.orgRequests });
  const bucket = (org: string, model = FLASH) => `${agentqPrefix(prefix)}:tb:rpm:org:${org}:${model}`;
  /** The bucket's stored level (a missing key is a full bucket: `cap`). */
  const stored = async (org: string, cap: number) => {
    const t = await redis.hget(bucket(org), 'tokens');
    return t === null ? cap : Number(t);
  };
  async function add(org: string, n: number, model = FLASH): Promise<string[]> {
    const ids = Array.from({ length: n }, () => `${org}-${seq++}`);
    await queue.addBulk(ids.map((id) => ({ name: 'j', data: { org }, opts: parkedJobOptions(id) })));
    await scheduler.enqueue(ids.map((jobId) => ({ jobId, orgId: org, model, estTokens: 0 })), { dispatch: false });
    return ids;
  }
  return { prefix, redis, scheduler, gate, guard, uncharged, bucket, stored, add };
}

describe("the org's RPM bucket has one capacity and rate: the dispatcher's", () => {
  it("a plan of 2 RPM: the guard's takes for uncharged calls are refused at the plan's cap, and never refill the bucket above it", async () => {
    const c = await setup();
    const org = randomOrg();
    await c.scheduler.setPlan(org, { rpm: { flash: 2 } });
    let calls = 0;
    const next = async () => (calls++, okResult('ok'));
    // Two fallback calls take the org's minute; the third waits for the plan's rate (a request every 30 s), not
    // MODEL_LIMITS' 200 a minute.
    for (let i = 0; i < 2; i++) {
      await c.guard(c.uncharged(org), next);
      expect(await c.stored(org, 2)).toBeLessThanOrEqual(2);
    }
    const refused = await c.guard(c.uncharged(org), next).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(DelayJobError);
    expect(refused).toMatchObject({ reason: 'rate_limited' });
    expect((refused as DelayJobError).delayMs).toBeGreaterThan(25_000);
    expect(calls).toBe(2);
    expect(await c.stored(org, 2)).toBeLessThan(1);
    // The dispatcher reads the same bucket: the org's next job waits on it.
    const [id] = await c.add(org, 1);
    expect((await c.scheduler.dispatch()).promoted).toEqual([]);
    expect(await c.scheduler.why(id)).toMatchObject({ reason: 'rate_limited', limit: `rpm:org:${org}:${FLASH}` });
  });

  it("after the dispatcher spent the plan's minute, a fallback call waits for the plan's rate (not the limiter's), and a call refused before it was sent gives its request back at that cap", async () => {
    const c = await setup();
    const org = randomOrg();
    await c.scheduler.setPlan(org, { rpm: { flash: 2 } });
    const ids = await c.add(org, 3);
    expect((await c.scheduler.dispatch()).promoted).toEqual(ids.slice(0, 2));
    // The review's proof: the limiter's 200 a minute refused this for ~300 ms and then admitted 9 calls in 3.5 s.
    const refused = await c.guard(c.uncharged(org), async () => okResult('ok')).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(DelayJobError);
    expect((refused as DelayJobError).delayMs).toBeGreaterThan(25_000);

    // Another org of the same plan: a call an inner guard refuses (an open breaker) gives its request back, to a
    // bucket of 2, never above (the limiter's give-back refilled it at 200 a minute and up to 200).
    const other = randomOrg();
    await c.scheduler.setPlan(other, { rpm: { flash: 2 } });
    const open = new OpenCircuitError(`gemini:${FLASH}`, 'open', Date.now() + 1000, 1000);
    await expect(c.guard(c.uncharged(other), () => Promise.reject(open))).rejects.toBe(open);
    expect(await c.stored(other, 2)).toBeLessThanOrEqual(2);
    await c.guard(c.uncharged(other), async () => okResult('a'));
    await c.guard(c.uncharged(other), async () => okResult('b'));
    expect(await c.stored(other, 2)).toBeLessThan(1);
    await expect(c.guard(c.uncharged(other), async () => okResult('c'))).rejects.toBeInstanceOf(DelayJobError);
  });

  it('a call the dispatch charged costs no take at all: the org\'s request is not taken again', async () => {
    const c = await setup();
    const org = randomOrg();
    let takes = 0;
    const ctx = guardContext({
      orgId: org,
      model: FLASH,
      prepaid: { model: FLASH, charged: 0 },
      charge: () => undefined,
      orgRequests: { take: async (...a) => (takes++, c.gate.orgRequests.take(...a)), giveBack: (o, m) => c.gate.orgRequests.giveBack(o, m) },
    });
    await c.guard(ctx, async () => okResult('ok'));
    expect(takes).toBe(0);
    expect(await c.redis.exists(c.bucket(org))).toBe(0);
  });

  it("resolves the cap as a dispatch does: the plan, then the model's per-org rpm (stored, else the configured one), then the tier's default", async () => {
    const c = await setup({ defaults: { weight: 1, concurrency: 0, rpm: { pro: 30, flash: 2 }, tpm: 0 }, modelLimits: (m) => (m === 'fallback-flash' ? { orgRpm: 1 } : {}) });
    const take = (org: string, model: string) => c.scheduler.takeRequest(org, model);
    // The tier's default (ORG_RPM_FLASH here 2).
    const plain = randomOrg();
    expect((await take(plain, FLASH)).allowed).toBe(true);
    expect((await take(plain, FLASH)).allowed).toBe(true);
    expect(await take(plain, FLASH)).toMatchObject({ allowed: false, limitedBy: `rpm:org:${plain}:${FLASH}` });
    // A model no job was enqueued for (no stored limits): the configured orgRpm (1).
    const fb = randomOrg();
    expect((await take(fb, 'fallback-flash')).allowed).toBe(true);
    expect((await take(fb, 'fallback-flash')).allowed).toBe(false);
    // The org's own plan over both.
    const planned = randomOrg();
    await c.scheduler.setPlan(planned, { rpm: { flash: 3 } });
    for (let i = 0; i < 3; i++) expect((await take(planned, 'fallback-flash')).allowed).toBe(true);
    expect((await take(planned, 'fallback-flash')).allowed).toBe(false);
    // A give-back returns one request, and refills nothing past the cap.
    await c.scheduler.giveBackRequest(planned, 'fallback-flash');
    await c.scheduler.giveBackRequest(planned, 'fallback-flash');
    await c.scheduler.giveBackRequest(planned, 'fallback-flash');
    await c.scheduler.giveBackRequest(planned, 'fallback-flash');
    for (let i = 0; i < 3; i++) expect((await take(planned, 'fallback-flash')).allowed).toBe(true);
    expect((await take(planned, 'fallback-flash')).allowed).toBe(false);
  });

  it("takes the org's request with the model's buckets all or none, in one call", async () => {
    const c = await setup();
    const org = randomOrg();
    await c.scheduler.setPlan(org, { rpm: { flash: 5 } });
    const model = { key: `rpm:model:${FLASH}`, capacity: 1, refillPerSec: 1 / 60, cost: 1 };
    expect((await c.scheduler.takeRequest(org, FLASH, [model])).allowed).toBe(true);
    const refused = await c.scheduler.takeRequest(org, FLASH, [model]);
    expect(refused).toMatchObject({ allowed: false, limitedBy: `rpm:model:${FLASH}` });
    expect(refused.msBeforeNext).toBeGreaterThan(50_000);
    // The refused call took nothing from the org's bucket: 4 of its 5 remain.
    expect(await c.stored(org, 5)).toBeCloseTo(4, 1);
    // A leased shard's model buckets are its reservoirs: a call never takes from them.
    const leased = await setup({ leases: { take: async () => ({ requests: 0, tokens: 0 }) } as unknown as FairSchedulerOptions['leases'] });
    await expect(leased.scheduler.takeRequest(org, FLASH, [model])).rejects.toThrow(/reservoir/);
  });

  it('a model named with "Pro" in capitals is a pro model for both the producer\'s limits and the dispatcher\'s org RPM', async () => {
    const PRO = 'gemini-2.5-Pro';
    // The producer's side: pro model limits.
    expect(tierOf(PRO)).toBe('pro');
    expect(defaultModelLimits.perOrgModelRpm('o', PRO)).toBe(30);
    // The dispatcher's: the org's pro RPM (3 here), not the flash one (1).
    const c = await setup({ defaults: { weight: 1, concurrency: 0, rpm: { pro: 3, flash: 1 }, tpm: 0 } });
    const org = randomOrg();
    const ids = await c.add(org, 4, PRO);
    const { promoted } = await c.scheduler.dispatch();
    expect(promoted).toEqual(ids.slice(0, 3));
    expect(Number(await c.redis.hget(c.bucket(org, PRO), 'tokens'))).toBeCloseTo(0, 1);
    expect(await c.scheduler.takeRequest(org, PRO)).toMatchObject({ allowed: false, limitedBy: `rpm:org:${org}:${PRO}` });
  });
});
