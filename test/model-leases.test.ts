import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { createDispatchLoop } from '../src/shared/fair/dispatch-loop.js';
import { createFairScheduler, type FairScheduler } from '../src/shared/fair/fair-scheduler.js';
import { createModelLeases, leaseChunk } from '../src/shared/fair/model-leases.js';
import { parkedJobOptions } from '../src/shared/fair/park.js';
import { queueShards } from '../src/shared/core/queue-shards.js';
import { agentqPrefix, guardKeys } from '../src/shared/core/queue-keys.js';
import { createTokenBuckets } from '../src/shared/limits/token-bucket.js';
import { createRateLimitGuard } from '../src/workers/guards/rate-limit-guard.js';
import { DelayJobError } from '../src/workers/middleware.js';
import { randomOrg, randomPrefix, redisUrl } from './helpers/env.js';
import { guardContext, okResult } from './helpers/guard-context.js';

const FLASH = 'gemini-2.5-flash';

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

interface Shard {
  prefix: string;
  queue: Queue;
  scheduler: FairScheduler;
  /** Ids the shard's dispatch loop promoted (its own dispatches and those after a lease). */
  promoted: string[];
  add(org: string, n: number): Promise<string[]>;
}

let seq = 0;
/**
 * Two queue shards (as QUEUE_SHARDS=2 lays them out) whose dispatchers lease from one model's global buckets
 * under the base prefix: `rpm` per minute for the model, no per-org limit.
 */
async function setup(rpm: number, shardCount = 2) {
  const base = randomPrefix();
  const redis = new Redis(redisUrl(), { maxRetriesPerRequest: null });
  cleanups.push(() => redis.quit());
  const globalPrefix = agentqPrefix(base);
  const limits = () => ({ rpm });
  const shards: Shard[] = queueShards(base, shardCount).prefixes.map((prefix) => {
    const queue = new Queue('fair', { connection: redis, prefix });
    cleanups.push(() => queue.close());
    const scheduler = createFairScheduler({
      redis,
      queue,
      keyPrefix: `${prefix}:fq`,
      bucketPrefix: agentqPrefix(prefix),
      defaults: { weight: 1, concurrency: 0, rpm: { pro: 0, flash: 0 }, tpm: 0 },
      modelLimits: limits,
      leaseMs: 60_000,
      bufferTarget: 100_000,
      leases: createModelLeases({ redis, bucketPrefix: globalPrefix, limits, shards: shardCount }),
    });
    const promoted: string[] = [];
    const loop = createDispatchLoop({ scheduler, safetyPollMs: 60_000, onDispatch: (r) => promoted.push(...r.promoted) });
    cleanups.push(() => loop.close());
    return {
      prefix,
      queue,
      scheduler,
      promoted,
      async add(org, n) {
        const ids = Array.from({ length: n }, () => `${org}-${seq++}`);
        await queue.addBulk(ids.map((id) => ({ name: 'j', data: { org }, opts: parkedJobOptions(id) })));
        const r = await scheduler.enqueue(ids.map((jobId) => ({ jobId, orgId: org, model: FLASH, estTokens: 0 })), { dispatch: false });
        expect(r.skipped).toEqual([]);
        await loop.kick();
        return ids;
      },
    };
  });
  const redisNow = async () => {
    const [s, us] = await redis.time();
    return Number(s) * 1000 + Number(us) / 1000;
  };
  return { redis, shards, globalPrefix, redisNow };
}

describe('model limits leased from global buckets (QUEUE_SHARDS > 1)', () => {
  it('sizes a lease at about a second of the quota, at most half the bucket over the shards', () => {
    expect(leaseChunk(150, 12)).toBe(3);
    expect(leaseChunk(1000, 12)).toBe(17);
    expect(leaseChunk(60, 2)).toBe(1);
    expect(leaseChunk(2_000_000, 12)).toBe(33_334);
    expect(leaseChunk(10, 12)).toBe(1);
    expect(leaseChunk(0, 12)).toBe(0);
  });

  it('a busy shard uses the quota an idle shard leaves (an even split would stop it at half)', async () => {
    const { shards } = await setup(60);
    const started = Date.now();
    await shards[0].add(randomOrg(), 100);
    // The whole bucket (60), not the 30 an even split over two shards would give.
    await vi.waitFor(() => expect(shards[0].promoted.length).toBeGreaterThanOrEqual(60), { timeout: 20_000, interval: 50 });
    const elapsedS = (Date.now() - started) / 1000;
    // Never more than the bucket plus its refill (1 a second) over the time taken.
    expect(shards[0].promoted.length).toBeLessThanOrEqual(60 + Math.ceil(elapsedS) + 1);
    expect(shards[1].promoted).toEqual([]);
    expect(await shards[0].queue.getWaitingCount()).toBe(shards[0].promoted.length);
    console.log(`[figure] leased: one busy shard of two dispatched ${shards[0].promoted.length} in ${elapsedS.toFixed(2)} s on a 60 RPM model`);
  });

  it('two busy shards together never dispatch more than the global bucket allows, and both get a part', async () => {
    const { shards } = await setup(60);
    const started = Date.now();
    await Promise.all([shards[0].add(randomOrg(), 100), shards[1].add(randomOrg(), 100)]);
    const total = () => shards[0].promoted.length + shards[1].promoted.length;
    await vi.waitFor(() => expect(total()).toBeGreaterThanOrEqual(60), { timeout: 20_000, interval: 50 });
    const elapsedS = (Date.now() - started) / 1000;
    expect(total()).toBeLessThanOrEqual(60 + Math.ceil(elapsedS) + 1);
    expect(shards[0].promoted.length).toBeGreaterThan(0);
    expect(shards[1].promoted.length).toBeGreaterThan(0);
    console.log(`[figure] leased: two busy shards dispatched ${shards[0].promoted.length} + ${shards[1].promoted.length} in ${elapsedS.toFixed(2)} s on a 60 RPM model`);
  });

  it('with the global bucket empty a lane sleeps until it refills, says rate_limited, and wakes by itself', async () => {
    const { redis, shards, globalPrefix, redisNow } = await setup(60);
    const s = shards[0];
    const ids = await s.add(randomOrg(), 70);
    await vi.waitFor(() => expect(s.promoted.length).toBeGreaterThanOrEqual(60), { timeout: 20_000, interval: 50 });
    const waiting = ids.filter((id) => !s.promoted.includes(id));
    const why = await s.scheduler.why(waiting[0]);
    expect(why).toMatchObject({ reason: 'rate_limited', limit: `rpm:model:${FLASH}` });
    // The refused lease left the time the next request fits: the lane sleeps until then (a second at most
    // for 1 a second), not on a poll.
    const standsUntil = Number(await redis.hget(s.scheduler.keys.named.leaseReq, FLASH));
    expect(standsUntil).toBeGreaterThan((await redisNow()) - 1000);
    expect(standsUntil).toBeLessThanOrEqual((await redisNow()) + 2100);
    // The global bucket is what ran out, not the shard's reservoir logic: its level is below one request.
    const level = Number(await redis.hget(guardKeys.tokenBucket(globalPrefix, `rpm:model:${FLASH}`), 'tokens'));
    expect(level).toBeLessThan(1);
    const before = s.promoted.length;
    await vi.waitFor(() => expect(s.promoted.length).toBeGreaterThan(before), { timeout: 10_000, interval: 50 });
  });

  it('asks for one lease at a time per shard and model, and asks again when the one asked for never came', async () => {
    const { shards } = await setup(60);
    const s = shards[0];
    const org = randomOrg();
    const ids = Array.from({ length: 3 }, () => `${org}-${seq++}`);
    await s.queue.addBulk(ids.map((id) => ({ name: 'j', data: { org }, opts: parkedJobOptions(id) })));
    // Raw calls: nobody answers the want (as when the process that got it died before leasing).
    const first = await s.scheduler.raw.enqueue(ids.flatMap((id) => [id, org, FLASH, 0, 0, 60, '', 0, '', '']), true);
    expect(first.ids).toEqual([]);
    expect(first.wants).toEqual([{ model: FLASH, requests: 1, tokens: 0 }]);
    const second = await s.scheduler.raw.dispatch();
    expect(second.wants).toEqual([]);
    // The request lapses (2 s) and the lane, awake again, asks again.
    await vi.waitFor(async () => expect((await s.scheduler.raw.dispatch()).wants).toEqual([{ model: FLASH, requests: 1, tokens: 0 }]), { timeout: 10_000, interval: 200 });
    // A lease answers it: the job is dispatched in the lease's own call.
    const granted = await s.scheduler.raw.lease(FLASH, 1, 0);
    expect(granted.ids).toEqual([ids[0]]);
  });

  it('a request handed back (a job cancelled before it started) stays in the shard for its next job', async () => {
    const { redis, shards } = await setup(60);
    const s = shards[0];
    const org = randomOrg();
    const ids = Array.from({ length: 2 }, () => `${org}-${seq++}`);
    await s.queue.addBulk(ids.map((id) => ({ name: 'j', data: { org }, opts: parkedJobOptions(id) })));
    await s.scheduler.raw.enqueue([ids[0], org, FLASH, 0, 0, 60, '', 0, '', ''], false);
    // The lease's own call dispatches with what it brought.
    expect((await s.scheduler.raw.lease(FLASH, 1, 0)).ids).toEqual([ids[0]]);
    const reservoir = guardKeys.tokenBucket(agentqPrefix(s.prefix), `rpm:model:${FLASH}`);
    expect(Number(await redis.hget(reservoir, 'tokens'))).toBe(0);
    expect(await s.scheduler.cancel(ids[0])).toBe(true);
    expect(Number(await redis.hget(reservoir, 'tokens'))).toBe(1);
    await s.scheduler.raw.enqueue([ids[1], org, FLASH, 0, 0, 60, '', 0, '', ''], false);
    const next = await s.scheduler.raw.dispatch();
    expect(next.ids).toEqual([ids[1]]);
    expect(next.wants).toEqual([]);
  });

  it("the worker's rate limiter takes a fallback call's model request from the same global bucket", async () => {
    const { redis, shards, globalPrefix } = await setup(2);
    const shardBuckets = createTokenBuckets({ redis, prefix: agentqPrefix(shards[0].prefix) });
    const guard = createRateLimitGuard({
      buckets: shardBuckets,
      modelBuckets: createTokenBuckets({ redis, prefix: globalPrefix }),
      limits: { modelRpm: () => 2, modelTpm: () => 0, perOrgModelRpm: () => 100 },
    });
    const orgId = randomOrg();
    const ctx = () => guardContext({ orgId, model: FLASH });
    await guard(ctx(), async () => okResult('a'));
    // A shard's lease takes the second request of the minute...
    const s = shards[0];
    const grant = await createModelLeases({ redis, bucketPrefix: globalPrefix, limits: () => ({ rpm: 2 }), shards: 2 }).take({ model: FLASH, requests: 1, tokens: 0 });
    expect(grant.requests).toBe(1);
    // ...so the next fallback call is refused, and the org's request it took first is given back.
    await expect(guard(ctx(), async () => okResult('b'))).rejects.toBeInstanceOf(DelayJobError);
    const orgBucket = guardKeys.tokenBucket(agentqPrefix(s.prefix), `rpm:org:${orgId}:${FLASH}`);
    expect(Number(await redis.hget(orgBucket, 'tokens'))).toBeGreaterThan(98.9);
  });
});
