import { DelayedError, Queue, Worker, type Job } from 'bullmq';
import { Redis } from 'ioredis';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { createDispatchLoop, type DispatchLoop } from '../src/shared/fair/dispatch-loop.js';
import type { DispatchResult } from '../src/shared/fair/fair-scheduler.js';
import { fairJobPrefix } from '../src/shared/fair/fair-keys.js';
import type { FairScheduler, FairSchedulerOptions } from '../src/shared/fair/fair-scheduler.js';
import { isParked, parkActiveJob, parkedJobOptions, PARK_SCORE_MIN } from '../src/shared/fair/park.js';
import { createTokenBuckets } from '../src/shared/limits/token-bucket.js';
import { randomOrg, randomPrefix, redisUrl } from './helpers/env.js';
import { cancelRequestedKey, guardKeys, orgJobsKey } from '../src/shared/core/queue-keys.js';
import { createResultCache, resultCacheHash, type CacheKeyParts } from '../src/shared/cache/result-cache.js';
import type { AgentResult } from '../src/shared/core/types.js';
import { okResult } from './helpers/guard-context.js';
import { monitorRedis, testScheduler } from './helpers/fair.js';
import { readLua } from '../src/shared/infra/lua.js';
import { POLL, waitsTimeout } from './helpers/wait.js';

const FLASH = 'gemini-2.5-flash';
const PRO = 'gemini-2.5-pro';

interface Ctx {
  prefix: string;
  redis: Redis;
  queue: Queue;
  scheduler: FairScheduler;
  /** Adds parked BullMQ jobs and lanes them without dispatching; returns their ids in order. */
  add(org: string, n: number, o?: { model?: string; priority?: number; est?: number; tag?: string }): Promise<string[]>;
  worker(processor: (job: Job, token?: string) => Promise<unknown>, concurrency?: number): Worker;
  /** A dispatch loop on the scheduler; its safety poll every 5 s unless told. */
  loop(onDispatch?: (r: DispatchResult) => void, safetyPollMs?: number): DispatchLoop;
  redisNow(): Promise<number>;
}

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

let seq = 0;
async function setup(over: Partial<FairSchedulerOptions> = {}): Promise<Ctx> {
  const prefix = randomPrefix();
  const redis = new Redis(redisUrl(), { maxRetriesPerRequest: null });
  const queue = new Queue('fair', { connection: redis, prefix });
  cleanups.push(() => redis.quit());
  cleanups.push(() => queue.close());
  const scheduler = testScheduler(redis, queue, prefix, over);
  return {
    prefix,
    redis,
    queue,
    scheduler,
    async add(org, n, o = {}) {
      const ids = Array.from({ length: n }, () => `${o.tag ?? org}-${seq++}`);
      await queue.addBulk(ids.map((id) => ({ name: 'j', data: { org }, opts: parkedJobOptions(id, o.priority) })));
      const r = await scheduler.enqueue(
        ids.map((jobId) => ({ jobId, orgId: org, model: o.model ?? FLASH, priority: o.priority, estTokens: o.est ?? 0 })),
        { dispatch: false },
      );
      expect(r.skipped).toEqual([]);
      return ids;
    },
    worker(processor, concurrency = 1) {
      const w = new Worker('fair', processor, {
        connection: new Redis(redisUrl(), { maxRetriesPerRequest: null }),
        prefix,
        concurrency,
      });
      cleanups.push(async () => {
        await w.close();
        await (w.opts.connection as Redis).quit();
      });
      return w;
    },
    async redisNow() {
      const [sec, usec] = await redis.time();
      return Number(sec) * 1000 + Math.floor(Number(usec) / 1000);
    },
    loop(onDispatch, safetyPollMs = 5_000) {
      const l = createDispatchLoop({ scheduler, safetyPollMs, onDispatch });
      cleanups.push(() => l.close());
      return l;
    },
  };
}

/** Dispatches until `n` ids came out (the per-call batch bound may split them), in order. */
async function dispatchN(s: FairScheduler, n: number): Promise<string[]> {
  const out: string[] = [];
  while (out.length < n) {
    const r = await s.raw.dispatch(n - out.length);
    if (r.ids.length === 0) break;
    out.push(...r.ids);
  }
  return out;
}

const orgOf = (id: string) => id.slice(0, id.lastIndexOf('-'));

/** Waits until Redis time is past the registration expiry of `worker` (however long its registering call took). */
async function lapsed(c: Ctx, worker: string): Promise<void> {
  const expiry = Number(await c.redis.zscore(c.scheduler.keys.named.workers, worker));
  expect(expiry).toBeGreaterThan(0);
  await vi.waitFor(async () => expect(await c.redisNow()).toBeGreaterThan(expiry), { ...POLL, interval: 1 });
}

describe('fair scheduler', () => {
  it("keeps BullMQ's wait list at the sum of the live workers' asks (a worker without one: the ratio of its concurrency)", async () => {
    const c = await setup({ bufferRatio: 0.5, bufferTarget: undefined });
    const org = randomOrg();
    await c.add(org, 40);
    const waiting = () => c.queue.getJobCountByTypes('waiting', 'prioritized');
    // No worker alive: nothing is promoted, jobs keep waiting fairly.
    expect((await c.scheduler.dispatch()).promoted).toEqual([]);
    await c.scheduler.dispatch({ id: 'w1', concurrency: 10, ttlMs: 60_000, ask: 10 });
    expect(await waiting()).toBe(10);
    /** A worker's fetch: `n` jobs leave BullMQ's wait list. */
    const fetch = async (n: number) => {
      for (const j of (await c.queue.getWaiting()).slice(0, n)) await c.redis.lrem(c.queue.toKey('wait'), 0, j.id!);
    };
    // A worker registering no ask counts for the ratio of its concurrency: ceil(0.5 x 16) = 8.
    await c.scheduler.dispatch({ id: 'w2', concurrency: 16, ttlMs: 60_000 });
    expect(await waiting()).toBe(18);
    // A worker's new ask replaces its old one: 20. A target over 16 is refilled in batches of 8 or more: 18 of 20
    // lacks 2, not yet; five fetched, it lacks 7, not yet; six, it lacks 8.
    await c.scheduler.dispatch({ id: 'w1', concurrency: 10, ttlMs: 60_000, ask: 12 });
    expect(await waiting()).toBe(18);
    await fetch(5);
    await c.scheduler.dispatch();
    expect(await waiting()).toBe(13);
    await fetch(1);
    await c.scheduler.dispatch();
    expect(await waiting()).toBe(20);
    // An expired registration no longer counts: w2 lapses, the list is not refilled beyond w1's ask (1 of 20
    // left: it lacks all but one of w1's 12, a target of 16 or less).
    await c.scheduler.dispatch({ id: 'w2', concurrency: 16, ttlMs: 1 });
    await lapsed(c, 'w2');
    const ids = (await c.queue.getWaiting()).slice(0, 19).map((j) => j.id!);
    for (const id of ids) await c.queue.remove(id);
    await c.scheduler.release(ids);
    await c.scheduler.dispatch();
    expect(await waiting()).toBe(12);
    expect(await c.redis.zrange(c.scheduler.keys.named.workers, 0, -1)).toEqual(['w1']);
  });

  it("registers a worker's moved ask carried by its claim, before the claim's refill sizes the list by it", async () => {
    const c = await setup({ bufferRatio: 0.5, bufferTarget: undefined });
    const org = randomOrg();
    await c.add(org, 40);
    const waiting = () => c.queue.getJobCountByTypes('waiting', 'prioritized');
    await c.scheduler.dispatch({ id: 'w1', concurrency: 10, ttlMs: 60_000, ask: 2 });
    expect(await waiting()).toBe(2);
    // The worker fetches both and claims the second with its new ask: the refill fills to 12, not to 2.
    const first = (await c.queue.getWaiting()).map((j) => j.id!);
    for (const id of first) await c.redis.lrem(c.queue.toKey('wait'), 0, id);
    await c.scheduler.claim(first[0]);
    const r = await c.scheduler.claim(first[1], undefined, { refill: true, register: { id: 'w1', concurrency: 10, ttlMs: 60_000, ask: 12 } });
    expect(r).toMatchObject({ held: true, cancelled: false });
    expect(r.dispatched?.promoted).toHaveLength(12);
    expect(await waiting()).toBe(12);
    expect(await c.redis.hget(c.scheduler.keys.named.workerConc, 'w1')).toBe('12');
    const expiry = Number(await c.redis.zscore(c.scheduler.keys.named.workers, 'w1'));
    expect(expiry - (await c.redisNow())).toBeGreaterThan(50_000);
    // A claim of a job without a slot still registers (the registration is the worker's, not the job's).
    expect(await c.scheduler.claim('no-such-job', undefined, { register: { id: 'w2', concurrency: 4, ttlMs: 60_000 } })).toMatchObject({ held: false });
    expect(await c.redis.hget(c.scheduler.keys.named.workerConc, 'w2')).toBe('2');
  });

  it('stores whole times as integers: a model block, a claimed lease', async () => {
    // The scripts format a whole number with `%d` (fmt): the digits `%.17g` gave it, stored alike.
    const c = await setup();
    const [id] = await c.add(randomOrg(), 1);
    await c.scheduler.raw.dispatch();
    const before = await c.redisNow();
    expect(await c.scheduler.claim(id, undefined, {})).toMatchObject({ held: true });
    await c.scheduler.blockModel(FLASH, 5_000, 'breaker_open');
    const { modelBlock, leases } = c.scheduler.keys.named;
    const until = await c.redis.hget(modelBlock, FLASH);
    expect(until).toMatch(/^\d+$/);
    expect(Number(until) - before).toBeGreaterThanOrEqual(5_000);
    // The lease: the claim's time in whole ms plus the lease (60 s here), a whole score.
    const lease = Number(await c.redis.zscore(leases, id));
    expect(lease % 1).toBe(0);
    expect(lease - before).toBeGreaterThanOrEqual(60_000);
  });

  it("a dispatch of a batch from one lane takes its jobs out of BullMQ's delayed set in one ZREM, after one ZMSCORE; a one-job refill in its own ZREM", async () => {
    // A throttled lane's wake-up sends a batch (10 at 60 RPM): one ZREM of the delayed set per job was 8 commands more
    // than the head's ZMSCORE and one ZREM. Jobs not parked keep their meaning: one removed behind the dispatcher's back
    // is dropped, one promoted by hand (in the wait list, not parked) is leased as it is.
    const c = await setup();
    const org = randomOrg();
    const ids = await c.add(org, 10);
    const delayed = `${c.prefix}:fair:delayed`;
    await c.redis.zrem(delayed, ids[3]);
    await c.redis.del(`${c.prefix}:fair:${ids[3]}`);
    await c.redis.zrem(delayed, ids[6]);
    await c.redis.lpush(`${c.prefix}:fair:wait`, ids[6]);
    /** One dispatch under MONITOR: what it promoted, its ZREMs and ZMSCOREs of the delayed set. */
    const dispatchSeen = async (over: Partial<FairSchedulerOptions> = {}) => {
      const s = testScheduler(c.redis, c.queue, c.prefix, over);
      const seen: string[] = [];
      const monitor = await monitorRedis(redisUrl(), (line) => {
        if (line.includes(c.prefix)) seen.push(line);
      });
      const r = await s.dispatch();
      const done = `${c.prefix}:monitor-done`;
      await c.redis.set(done, String(Math.random()));
      await vi.waitFor(() => expect(seen.some((l) => l.includes(done))).toBe(true), POLL);
      monitor.close();
      const on = (cmd: string) => seen.filter((l) => l.includes(`"${cmd}" "${delayed}"`)).length;
      return { ids: r.promoted, zrem: on('ZREM'), zmscore: on('ZMSCORE') };
    };
    const first = await dispatchSeen();
    // The job promoted by hand holds a slot (its lease lets it run) but is not promoted again.
    expect(first).toEqual({ ids: ids.filter((id) => id !== ids[3] && id !== ids[6]), zrem: 1, zmscore: 1 });
    expect(await c.redis.zscore(c.scheduler.keys.named.leases, ids[6])).not.toBeNull();
    expect(await c.redis.zcard(delayed)).toBe(0);
    expect(await c.redis.exists(`${c.prefix}:fq:job:${ids[3]}`)).toBe(0);
    // A refill's room of one job (the wait list emptied by workers, here by hand): its own ZREM, no read before it.
    const more = await c.add(org, 3);
    await c.redis.del(`${c.prefix}:fair:wait`);
    expect(await dispatchSeen({ bufferTarget: 1 })).toEqual({ ids: [more[0]], zrem: 1, zmscore: 0 });
    expect((await c.redis.zrange(delayed, 0, -1)).sort()).toEqual(more.slice(1).sort());
  });

  it("a claim's arguments are the script header's, as strings: the config, the refill flag and the corrections' count '0'", async () => {
    // The claim sends its fixed arguments prebuilt as strings, and the count the script compares with '0' (its
    // common path, claimUncorrected): the same text ioredis made of the numbers before.
    const c = await setup();
    const [id] = await c.add(randomOrg(), 1);
    const seen: string[] = [];
    const monitor = await monitorRedis(redisUrl(), (line) => {
      if (line.includes(c.prefix)) seen.push(line);
    });
    await c.scheduler.claim(id, '{"stage":"x"}', { refill: true, release: ['gone-1'] });
    await c.scheduler.claim(id, undefined, { correct: [{ org: 'o', model: FLASH, orgDelta: 0, modelDelta: -3, requests: -1 }] });
    const done = `${c.prefix}:monitor-done`;
    await c.redis.set(done, '1');
    await vi.waitFor(() => expect(seen.some((l) => l.includes(done))).toBe(true), POLL);
    monitor.close();
    const argvOf = (line: string) => {
      const args = [...line.matchAll(/"((?:[^"\\]|\\.)*)"/g)].map((m) => m[1]);
      return args.slice(args.indexOf('claim'));
    };
    const claims = seen.filter((l) => l.includes('"claim"')).map(argvOf);
    expect(claims).toHaveLength(2);
    // ARGV 1-4: op, lease ms, buffer target, and the rest of the config in one argument: default plan (weight,
    // concurrency, rpm pro, rpm flash, tpm), parked score, max batch, sweep max, leased.
    const head = ['claim', '60000', '100000', `1 0 0 0 0 ${PARK_SCORE_MIN} 500 100 0`];
    expect(claims[0]).toEqual([...head, id, '{\\"stage\\":\\"x\\"}', '1', '', '', '', '0', '', '0', 'gone-1']);
    expect(claims[1]).toEqual([...head, id, '', '0', '', '', '', '0', '', '1', 'o', FLASH, '0', '-3', '-1']);
  });

  it('answers each way past the early answers (fair-core-N.lua longWay) as the main chunk did: corrected claims, a refill, an unknown op', async () => {
    // The long way runs in a function of its own, its closures binding the main chunk's locals through it: each of
    // its exits is pinned here, the one of a claim with corrections and handed releases (before the lanes' functions),
    // the end of a claim with corrections alone, the early claim's refill, and the unknown op's error.
    // A buffer of one job: each refill dispatches one.
    const c = await setup({ bufferTarget: 1 });
    const org = randomOrg();
    const ids = await c.add(org, 4);
    const { leases } = c.scheduler.keys.named;
    const fetch = (id: string) => c.redis.lrem(c.queue.toKey('wait'), 0, id);
    const correct = [{ org, model: FLASH, orgDelta: 0, modelDelta: -3, requests: 0 }];
    expect((await c.scheduler.raw.dispatch(1)).ids).toEqual([ids[0]]);
    await fetch(ids[0]);
    // Corrections alone, with the refill: the long way's own claim, which dispatches the next job (the list is empty).
    const first = await c.scheduler.claim(ids[0], undefined, { refill: true, correct });
    expect(first).toMatchObject({ held: true, cancelled: false });
    expect(first.dispatched?.promoted).toEqual([ids[1]]);
    await fetch(ids[1]);
    // No corrections, the refill: the early claim's way on, dispatching the next.
    const second = await c.scheduler.claim(ids[1], undefined, { refill: true });
    expect(second).toMatchObject({ held: true, cancelled: false });
    expect(second.dispatched?.promoted).toEqual([ids[2]]);
    // Corrections and a handed release, the list holding a job: answered before the lanes' functions, the slot freed.
    const third = await c.scheduler.claim(ids[2], undefined, { correct, release: [ids[0]] });
    expect(third).toEqual({ held: true, cancelled: false });
    expect(await c.redis.zscore(leases, ids[0])).toBeNull();
    expect(await c.redis.zscore(leases, ids[2])).not.toBeNull();
    const head = ['60000', '1', `1 0 0 0 0 ${PARK_SCORE_MIN} 1 1 0`];
    await expect(c.redis.eval(readLua('fair-core-N.lua'), 4, ...c.scheduler.keys.script, 'no-such-op', ...head)).rejects.toThrow('unknown fair op no-such-op');
  });

  it("a registration's renewal (the same ask) moves only its expiry, unless the worker was swept meanwhile", async () => {
    const c = await setup({ bufferRatio: 0.5, bufferTarget: undefined });
    const { workers, workerConc } = c.scheduler.keys.named;
    const seen: string[] = [];
    const monitor = await monitorRedis(redisUrl(), (line) => {
      if (line.includes(c.prefix)) seen.push(line);
    });
    await c.scheduler.dispatch({ id: 'w1', concurrency: 10, ttlMs: 60_000, ask: 6 });
    const first = Number(await c.redis.zscore(workers, 'w1'));
    // Renewed by a dispatch and by a claim: the expiry moves, the ask is not written again.
    await c.scheduler.dispatch({ id: 'w1', concurrency: 10, ttlMs: 90_000, ask: 6, renewal: true });
    expect(Number(await c.redis.zscore(workers, 'w1'))).toBeGreaterThan(first + 20_000);
    const second = Number(await c.redis.zscore(workers, 'w1'));
    await c.scheduler.claim('no-such-job', undefined, { register: { id: 'w1', concurrency: 10, ttlMs: 120_000, ask: 6, renewal: true } });
    expect(Number(await c.redis.zscore(workers, 'w1'))).toBeGreaterThan(second + 20_000);
    // A renewal of a worker the registry no longer holds (swept after it lapsed, or never there) writes its ask.
    await c.scheduler.dispatch({ id: 'w2', concurrency: 10, ttlMs: 60_000, ask: 3, renewal: true });
    await c.scheduler.claim('no-such-job', undefined, { register: { id: 'w3', concurrency: 10, ttlMs: 60_000, ask: 4, renewal: true } });
    const done = `${c.prefix}:monitor-done`;
    await c.redis.set(done, '1');
    await vi.waitFor(() => expect(seen.some((l) => l.includes(done))).toBe(true), POLL);
    monitor.close();
    const asks = seen.filter((l) => l.includes(`"HSET" "${workerConc}"`));
    expect(asks).toHaveLength(3);
    expect(asks.map((l) => l.split(' ').slice(-2).join(' '))).toEqual(['"w1" "6"', '"w2" "3"', '"w3" "4"']);
    expect(await c.redis.hgetall(workerConc)).toEqual({ w1: '6', w2: '3', w3: '4' });
    expect(await c.redis.zrange(workers, 0, -1)).toEqual(['w2', 'w3', 'w1']);
  });

  it('sweeps lapsed workers only once the list lacks a batch, then fills it to the live asks alone', async () => {
    const c = await setup({ bufferRatio: 0.5, bufferTarget: undefined });
    const org = randomOrg();
    await c.add(org, 40);
    const waiting = () => c.queue.getJobCountByTypes('waiting', 'prioritized');
    const workers = () => c.redis.zrange(c.scheduler.keys.named.workers, 0, -1);
    await c.scheduler.dispatch({ id: 'w1', concurrency: 10, ttlMs: 60_000, ask: 10 });
    await c.scheduler.dispatch({ id: 'w2', concurrency: 16, ttlMs: 1, ask: 8 });
    expect(await waiting()).toBe(18);
    await lapsed(c, 'w2');
    // One job after another, each claim carrying the last one's release: the list lacks less than a batch even
    // counting w2's lapsed ask, so these claims do not read the registry (w2 stays in it).
    const order = (await c.queue.getWaiting()).reverse().map((j) => j.id!);
    const run = async (i: number) => {
      await c.redis.lrem(c.queue.toKey('wait'), 0, order[i]);
      const r = await c.scheduler.claim(order[i], undefined, i > 0 ? { release: [order[i - 1]] } : {});
      expect(r).toMatchObject({ held: true, cancelled: false });
      return (await r.dispatched)?.promoted ?? [];
    };
    for (let i = 0; i < 7; i++) expect(await run(i)).toEqual([]);
    expect((await workers()).sort()).toEqual(['w1', 'w2']);
    // 8 of 18 lacking: a batch counting w2, so w2 is swept first, and against w1's 10 alone nothing is lacking.
    expect(await run(7)).toEqual([]);
    expect(await workers()).toEqual(['w1']);
    expect(await waiting()).toBe(10);
  });

  it('keeps jobs parked until dispatched, then hands them out by priority and FIFO', async () => {
    const c = await setup({ bufferTarget: 1 });
    const org = randomOrg();
    const low = await c.add(org, 3, { priority: 5 });
    const none = await c.add(org, 3);
    const high = await c.add(org, 2, { priority: 1 });
    expect(await c.queue.getDelayedCount()).toBe(8);
    expect(await c.queue.getWaitingCount()).toBe(0);
    const job = await c.queue.getJob(low[0]);
    expect(isParked(job!)).toBe(true);
    expect(Number(await c.redis.zscore(c.queue.toKey('delayed'), low[0]))).toBeGreaterThanOrEqual(PARK_SCORE_MIN);

    // A live worker runs an ordinary job but none of the parked ones.
    const ran: string[] = [];
    const w = c.worker(async (j) => void ran.push(j.id!));
    await c.queue.add('probe', {}, { jobId: 'probe' });
    await vi.waitFor(() => expect(ran).toEqual(['probe']), { timeout: 10_000 });
    expect(await c.queue.getDelayedCount()).toBe(8);

    // bufferTarget 1: each dispatch hands out one job only while BullMQ's wait is empty.
    const order: string[] = [];
    await w.close();
    for (let i = 0; i < 8; i++) {
      const r = await c.scheduler.dispatch();
      expect(r.promoted).toHaveLength(1);
      expect((await c.scheduler.dispatch()).promoted).toEqual([]);
      expect(await c.queue.getJobCountByTypes('waiting', 'prioritized')).toBe(1);
      order.push(...r.promoted);
      await c.scheduler.release(r.promoted);
      await c.queue.remove(r.promoted[0]);
    }
    expect(order).toEqual([...none, ...high, ...low]);
    expect(ran).toEqual(['probe']);
  });

  it('shares dispatches by weight 1:1:2, in total and in every window of 40', async () => {
    const c = await setup({ maxBatch: 400 });
    const [a, b, heavy] = [randomOrg(), randomOrg(), randomOrg()];
    await c.scheduler.setPlan(heavy, { weight: 2 });
    for (const org of [a, b, heavy]) await c.add(org, 260);
    const order = await dispatchN(c.scheduler, 400);
    expect(order).toHaveLength(400);
    const share = (ids: string[], org: string) => ids.filter((id) => orgOf(id) === org).length / ids.length;
    for (const [org, want] of [[a, 0.25], [b, 0.25], [heavy, 0.5]] as const) {
      expect(Math.abs(share(order, org) - want)).toBeLessThanOrEqual(0.05);
      for (let i = 0; i + 40 <= order.length; i++) {
        expect(Math.abs(share(order.slice(i, i + 40), org) - want)).toBeLessThanOrEqual(0.05);
      }
    }
  });

  it('gives equal weights equal shares (Jain index >= 0.99)', async () => {
    const c = await setup();
    const orgs = [randomOrg(), randomOrg(), randomOrg(), randomOrg()];
    // Different backlog sizes and enqueue order must not matter while all are backlogged.
    for (const [i, org] of orgs.entries()) await c.add(org, 150 + 50 * i);
    const order = await dispatchN(c.scheduler, 400);
    const x = orgs.map((o) => order.filter((id) => orgOf(id) === o).length);
    const jain = x.reduce((s, v) => s + v, 0) ** 2 / (x.length * x.reduce((s, v) => s + v * v, 0));
    expect(jain).toBeGreaterThanOrEqual(0.99);
  });

  it('serves a newcomer at once, and a returning org gets its share but no burst', { timeout: 60_000 }, async () => {
    const c = await setup();
    const [a, b] = [randomOrg(), randomOrg()];
    await c.add(a, 5000);
    expect(await dispatchN(c.scheduler, 100)).toHaveLength(100);
    const [newcomer] = await c.add(b, 1);
    expect((await dispatchN(c.scheduler, 2)).slice(0, 2)).toContain(newcomer);
    // b was idle while a ran 100+ jobs: it must not get them back as a burst.
    await dispatchN(c.scheduler, 50);
    await c.add(b, 50);
    const next = await dispatchN(c.scheduler, 20);
    const bCount = next.filter((id) => orgOf(id) === b).length;
    expect(bCount).toBeGreaterThanOrEqual(9);
    expect(bCount).toBeLessThanOrEqual(11);
  });
});

describe('fair scheduler enqueue', () => {
  it('one call with jobs of two orgs to two models, interleaved, lanes every job in FIFO order per lane', async () => {
    const c = await setup();
    const [a, b] = [randomOrg(), randomOrg()];
    const plan = Array.from({ length: 24 }, (_, i) => ({ org: i % 3 === 2 ? b : a, model: i % 2 === 0 ? FLASH : PRO, id: `mix-${i}` }));
    await c.queue.addBulk(plan.map((p) => ({ name: 'j', data: {}, opts: parkedJobOptions(p.id) })));
    const r = await c.scheduler.enqueue(
      plan.map((p) => ({ jobId: p.id, orgId: p.org, model: p.model, estTokens: 0 })),
      { dispatch: false },
    );
    expect(r.skipped).toEqual([]);
    const order = await dispatchN(c.scheduler, plan.length);
    expect([...order].sort()).toEqual(plan.map((p) => p.id).sort());
    // Within each lane (org, model) jobs come out in the order they were sent.
    for (const org of [a, b]) {
      for (const model of [FLASH, PRO]) {
        const lane = plan.filter((p) => p.org === org && p.model === model).map((p) => p.id);
        expect(lane.length).toBeGreaterThan(0);
        expect(order.filter((id) => lane.includes(id))).toEqual(lane);
      }
    }
  });
  it('a call larger than one script call can take is split (the lanes\' ZADDs are one command per lane), and an id sent twice is laned once', { timeout: 60_000 }, async () => {
    // enqueueChunk above the cap: a single call of 5000 jobs would unpack 10000 values, over Redis Lua's 8000.
    const c = await setup({ enqueueChunk: 10_000 });
    const org = randomOrg();
    const ids = Array.from({ length: 5000 }, (_, i) => `big-${i}`);
    for (let i = 0; i < ids.length; i += 1000) {
      await c.queue.addBulk(ids.slice(i, i + 1000).map((id) => ({ name: 'j', data: {}, opts: parkedJobOptions(id) })));
    }
    const r = await c.scheduler.enqueue([...ids, ids[0]].map((jobId) => ({ jobId, orgId: org, model: FLASH, estTokens: 0 })), { dispatch: false });
    expect(r.skipped).toEqual([]);
    const out = await dispatchN(c.scheduler, ids.length + 1);
    expect(out).toEqual(ids);
  });
});

describe('fair scheduler round trips', () => {
  it('enqueue lanes, dispatches and promotes in one script call', async () => {
    const c = await setup();
    const org = randomOrg();
    await c.queue.add('j', {}, parkedJobOptions('rt-1'));
    let commands = 0;
    const send = c.redis.sendCommand.bind(c.redis);
    (c.redis as unknown as { sendCommand: typeof send }).sendCommand = (...a: Parameters<typeof send>) => {
      commands++;
      return send(...a);
    };
    const r = await c.scheduler.enqueue([{ jobId: 'rt-1', orgId: org, model: FLASH, estTokens: 10 }]);
    expect(r.promoted).toEqual(['rt-1']);
    expect(commands).toBe(1);
    expect(await c.queue.getJobState('rt-1')).toBe('waiting');
  });

  it('promotes a dispatched job exactly as BullMQ\'s own promote does: list or priority set, marker, event, delay', async () => {
    // The same parked jobs, promoted once by BullMQ's script (Job.promote) and once by the dispatch.
    const snapshot = async (c: Ctx, ids: string[]) => {
      const q = (t: string) => c.queue.toKey(t);
      const events = await c.redis.xrange(q('events'), '-', '+');
      return {
        wait: (await c.redis.lrange(q('wait'), 0, -1)).map((id) => ids.indexOf(id)),
        prioritized: (await c.redis.zrange(q('prioritized'), 0, -1, 'WITHSCORES')).map((x, i) => (i % 2 ? x : ids.indexOf(x))),
        delayed: await c.redis.zcard(q('delayed')),
        marker: await c.redis.zrange(q('marker'), 0, -1, 'WITHSCORES'),
        pc: await c.redis.get(q('pc')),
        waitingEvents: events.filter(([, f]) => f[1] === 'waiting').map(([, f]) => [f[2], ids.indexOf(f[3]), f[4], f[5]]),
        delays: await Promise.all(ids.map((id) => c.redis.hget(q(id), 'delay'))),
      };
    };
    for (const paused of [false, true]) {
      const byBull = await setup();
      const byFair = await setup();
      const states = [];
      for (const c of [byBull, byFair]) {
        if (paused) await c.queue.pause();
        const org = randomOrg();
        // Without and with a priority; BullMQ's promote is called in the order the dispatcher hands them out.
        const ids = [...(await c.add(org, 2)), ...(await c.add(org, 2, { priority: 3 }))];
        if (c === byBull) for (const id of ids) await (await c.queue.getJob(id))!.promote();
        else expect((await c.scheduler.dispatch()).promoted).toEqual(ids);
        states.push(await snapshot(c, ids));
      }
      expect(states[0].delayed).toBe(0);
      expect(states[0].wait.length + states[0].prioritized.length / 2).toBe(4);
      expect(states[1]).toEqual(states[0]);
      // The base marker ('0', score 0) wakes a blocked worker; a paused queue gets none.
      expect(states[0].marker.filter((_, i) => i % 2 === 0).includes('0')).toBe(!paused);
    }
  });

  it('a dispatch of many jobs writes the leases, the in-flight counts and BullMQ\'s wait list once per call, not once per job', async () => {
    const c = await setup({ bufferTarget: 8 });
    const [a, b] = [randomOrg(), randomOrg()];
    await c.scheduler.setPlan(a, { concurrency: 3 });
    const ids = [...(await c.add(a, 5)), ...(await c.add(b, 5))];
    const { leases, inflight } = c.scheduler.keys.named;
    const wait = c.queue.toKey('wait');
    const seen: string[] = [];
    const monitor = await monitorRedis(redisUrl(), (line) => {
      if (line.includes(c.prefix)) seen.push(line);
    });
    const r = await c.scheduler.dispatch();
    // Both orgs alternate until a's cap: a's third job is its last (the call counts what it dispatched itself).
    expect(r.promoted).toHaveLength(8);
    expect(r.promoted.filter((id) => ids.indexOf(id) < 5)).toEqual(ids.slice(0, 3));
    await vi.waitFor(() => expect(seen.some((l) => l.includes('"LPUSH"'))).toBe(true), POLL);
    monitor.close();
    const count = (cmd: string, key: string) => seen.filter((l) => l.includes(`"${cmd}" "${key}"`)).length;
    expect(count('ZADD', leases)).toBe(1);
    expect(count('HINCRBY', inflight)).toBe(2);
    expect(count('LPUSH', wait)).toBe(1);
    // Each org's lane is read once and its jobs leave it in one ZREM, though the orgs took turns (a lane set aside
    // when its org's turn ended was written and read again: a ZREM and a ZRANGE per job).
    for (const org of [a, b]) {
      const lane = `${c.scheduler.keys.named.lanePrefix}${org}|${FLASH}`;
      expect([count('ZRANGE', lane), count('ZREM', lane)]).toEqual([1, 1]);
    }
    expect(await c.redis.zrange(`${c.scheduler.keys.named.lanePrefix}${a}|${FLASH}`, 0, -1)).toEqual(ids.slice(3, 5));
    // The same state as a command per job: every slot leased, counted per org, and the list in dispatch order.
    expect(await c.redis.zcard(leases)).toBe(8);
    expect(await c.redis.hgetall(inflight)).toEqual({ [a]: '3', [b]: '5' });
    expect(await c.redis.lrange(wait, 0, -1)).toEqual([...r.promoted].reverse());
  });

  it("a run of one org's jobs writes its virtual time once; mixed weights still dispatch in weighted fair queueing's exact order", async () => {
    // Room for both dispatches: the first one's 5 jobs stay in BullMQ's wait list.
    const c = await setup({ bufferTarget: 45 });
    const { vt, lanes } = c.scheduler.keys.named;
    const seen: string[] = [];
    const monitor = await monitorRedis(redisUrl(), (line) => {
      if (line.includes(c.prefix)) seen.push(line);
    });
    const solo = randomOrg();
    await c.scheduler.setPlan(solo, { weight: 2, concurrency: 5 });
    await c.add(solo, 8);
    seen.length = 0;
    expect(await c.scheduler.dispatch()).toMatchObject({ promoted: expect.any(Array) });
    await vi.waitFor(() => expect(seen.some((l) => l.includes('"LPUSH"'))).toBe(true), POLL);
    const count = (cmd: string, key: string) => seen.filter((l) => l.includes(`"${cmd}" "${key}"`)).length;
    // The only lane, up to its org's cap of 5: one read of the top lanes, then the one that finds none left; one
    // write of the org's vt, when the 6th try parks the lane at the cap. A command per job wrote it 5 times and
    // read the top 7 times.
    expect(count('ZRANGE', lanes)).toBe(2);
    expect(count('HSET', vt)).toBe(1);
    // The lane's own head is read once for the run and its 5 jobs leave it in one ZREM (a command each per job
    // read it 6 times and wrote it 5).
    const soloLane = `${c.scheduler.keys.named.lanePrefix}${solo}|${FLASH}`;
    expect([count('ZRANGE', soloLane), count('ZREM', soloLane)]).toEqual([1, 1]);
    expect(await c.redis.zcard(soloLane)).toBe(3);
    expect(Number(await c.redis.hget(vt, solo))).toBe(5 / 2);
    expect(await c.redis.zscore(lanes, `${solo}|${FLASH}`)).toBeNull();

    // Weights 4, 2 and 1 (exact binary steps): the order a per-job pick of the lowest (vt, lane) gives. Ties go to
    // the lane first by name, so the heaviest org is named last: a run going on at a tie would show.
    const base = randomOrg();
    const orgs = [`${base}-c`, `${base}-b`, `${base}-a`];
    const weights = [4, 2, 1];
    for (const [i, org] of orgs.entries()) {
      await c.scheduler.setPlan(org, { weight: weights[i] });
      await c.add(org, 20);
    }
    const start = Number(await c.redis.get(c.scheduler.keys.named.gvt));
    const sim = orgs.map((org, i) => ({ org, lane: `${org}|${FLASH}`, vt: start, w: weights[i], left: 20 }));
    const want: string[] = [];
    for (let k = 0; k < 40; k++) {
      const next = sim.filter((l) => l.left > 0).reduce((m, l) => (l.vt < m.vt || (l.vt === m.vt && l.lane < m.lane) ? l : m));
      want.push(next.org);
      next.vt += 1 / next.w;
      next.left--;
    }
    seen.length = 0;
    const r = await c.scheduler.dispatch();
    monitor.close();
    expect(r.promoted.map(orgOf)).toEqual(want);
    for (const l of sim) {
      expect(Number(await c.redis.hget(vt, l.org))).toBe(l.vt);
      // An emptied lane is no candidate any more; the others sit at their org's vt.
      expect(await c.redis.zscore(lanes, l.lane)).toBe(l.left > 0 ? String(l.vt) : null);
    }
    expect(count('HSET', vt)).toBeLessThan(40);
  });

  it('refuses to lane a job that is not parked in BullMQ', async () => {
    const c = await setup();
    await c.queue.add('j', {}, { jobId: 'plain' });
    const r = await c.scheduler.enqueue([{ jobId: 'plain', orgId: randomOrg(), model: FLASH, estTokens: 1 }, { jobId: 'missing', orgId: randomOrg(), model: FLASH, estTokens: 1 }]);
    expect(r.skipped).toEqual(['plain', 'missing']);
    expect(r.promoted).toEqual([]);
  });
});

describe('fair scheduler limits', () => {
  it('keeps an org at its concurrency cap under a busy worker, and finishes everything', { timeout: 60_000 }, async () => {
    const c = await setup({ bufferTarget: 20 });
    const org = randomOrg();
    await c.scheduler.setPlan(org, { concurrency: 3 });
    const loop = c.loop();
    let running = 0;
    let maxRunning = 0;
    let maxSampled = 0;
    let done = 0;
    const w = c.worker(async () => {
      maxRunning = Math.max(maxRunning, ++running);
      maxSampled = Math.max(maxSampled, await c.queue.getActiveCount());
      await new Promise((r) => setTimeout(r, 5)); // the job's own work
      running--;
    }, 10);
    const finished = (job: Job | undefined) => {
      if (!job) return;
      void c.scheduler.release([job.id!]).then(() => {
        done++;
        return loop.kick();
      });
    };
    w.on('completed', finished);
    w.on('failed', finished);
    for (let i = 0; i < 4; i++) {
      await c.add(org, 10);
      void loop.kick();
    }
    await vi.waitFor(() => expect(done).toBe(40), { timeout: 45_000, interval: 50 });
    expect(maxRunning).toBe(3);
    expect(maxSampled).toBeLessThanOrEqual(3);
    expect((await c.scheduler.orgStats(org)).inFlight).toBe(0);
    expect(await c.queue.getCompletedCount()).toBe(40);
  });

  it('dispatches a bucket-full at once, then only on wake-ups, with why() = rate_limited', async () => {
    const c = await setup({ bufferTarget: 1000 });
    const org = randomOrg();
    await c.scheduler.setPlan(org, { rpm: { flash: 60 } });
    const ids = await c.add(org, 100);
    let promoted = 0;
    // No safety poll within the test: only the wake-up can dispatch the next jobs, and a wait stretched by a busy
    // machine adds no poll to the commands counted.
    const loop = c.loop((r) => (promoted += r.promoted.length), 600_000);
    await loop.kick();
    expect(promoted).toBe(60);
    expect(await c.queue.getDelayedCount()).toBe(40);
    expect((await c.scheduler.orgStats(org)).waiting).toBe(40);
    const why = await c.scheduler.why(ids[60]);
    const now = await c.redisNow();
    expect(why).toMatchObject({ reason: 'rate_limited', limit: `rpm:org:${org}:${FLASH}`, position: 0 });
    // With 40 waiting, the lane sleeps until the bucket holds 5 s of its rate (5 requests), not its first one.
    expect(why!.etaMs! - now).toBeGreaterThan(3_900);
    expect(why!.etaMs! - now).toBeLessThanOrEqual(5_100);

    // Count every command our connection (scheduler + queue) sends while only the wake-ups run.
    let commands = 0;
    const send = c.redis.sendCommand.bind(c.redis);
    (c.redis as unknown as { sendCommand: typeof send }).sendCommand = (...a: Parameters<typeof send>) => {
      commands++;
      return send(...a);
    };
    const t0 = Date.now();
    await vi.waitFor(() => expect(promoted).toBeGreaterThanOrEqual(61), POLL);
    const elapsed = Date.now() - t0;
    // 1 token per second, gathered for 5 s: the next jobs go together, five of them, after about five seconds.
    expect(elapsed).toBeGreaterThan(3_800);
    expect(promoted).toBe(65);
    // One wake-up: one dispatch script (which promotes); polling would be tens of calls per second, a wake-up per
    // request five.
    expect(commands).toBeLessThanOrEqual(6);
  });

  it("a lane a dispatch wakes and puts back to sleep keeps its sleep entry, reason and start in place: no ZREM or HDEL of them", async () => {
    // A throttled lane's every wake-up sends its batch and sleeps again in the same call: taking it out of the
    // sleepers (a ZREM and two HDELs) only for the ZADD and HSETs that follow was 3 commands of each wake-up.
    const c = await setup({ bufferTarget: 1000 });
    const { sleep, sleepWhy, sleepStart, throttled, tbRpmOrgPrefix } = c.scheduler.keys.named;
    const org = randomOrg();
    const lane = `${org}|${FLASH}`;
    await c.scheduler.setPlan(org, { rpm: { flash: 60 } });
    await c.add(org, 100);
    expect((await c.scheduler.raw.dispatch()).ids).toHaveLength(60);
    const slept = Number(await c.redis.zscore(sleep, lane));
    // Its wake time moved to the past (a wake-up before the bucket holds what it waits for): woken, it finds the
    // bucket short and sleeps again.
    const due = (await c.redisNow()) - 1000;
    await c.redis.zadd(sleep, String(due), lane);
    await c.redis.hset(sleepStart, lane, String(due - 2000));
    /** One dispatch under MONITOR: what it promoted and its writes to the sleepers, their reasons and starts. */
    const dispatchSeen = async () => {
      const seen: string[] = [];
      const monitor = await monitorRedis(redisUrl(), (line) => {
        if (line.includes(c.prefix)) seen.push(line);
      });
      const before = await c.redisNow();
      const r = await c.scheduler.raw.dispatch();
      const done = `${c.prefix}:monitor-done`;
      await c.redis.set(done, String(Math.random()));
      await vi.waitFor(() => expect(seen.some((l) => l.includes(done))).toBe(true), POLL);
      monitor.close();
      const on = (cmd: string, key: string) => seen.filter((l) => l.includes(`"${cmd}" "${key}"`)).length;
      return { before, ids: r.ids, removed: on('ZREM', sleep) + on('HDEL', sleepWhy) + on('HDEL', sleepStart) };
    };
    const again = await dispatchSeen();
    expect(again).toMatchObject({ ids: [], removed: 0 });
    // As before: asleep until the bucket holds its batch, on the org's rate, since this dispatch; its last sleep counted.
    expect(Number(await c.redis.zscore(sleep, lane))).toBeGreaterThanOrEqual(slept - 1000);
    expect(await c.redis.hget(sleepWhy, lane)).toBe(`${tbRpmOrgPrefix}${org}:${FLASH}`);
    const start = Number(await c.redis.hget(sleepStart, lane));
    expect(start).toBeGreaterThanOrEqual(again.before);
    expect(start).toBeLessThanOrEqual(await c.redisNow());
    expect(Number(await c.redis.hget(throttled, org))).toBeGreaterThanOrEqual(3);
    // Woken with its bucket full (the bucket dropped): its 40 jobs go, the emptied lane leaves the sleepers for good.
    await c.redis.zadd(sleep, String((await c.redisNow()) - 1000), lane);
    await c.redis.del(`${tbRpmOrgPrefix}${org}:${FLASH}`);
    const emptied = await dispatchSeen();
    expect(emptied.ids).toHaveLength(40);
    expect(await c.redis.zscore(sleep, lane)).toBeNull();
    expect(await c.redis.hget(sleepWhy, lane)).toBeNull();
    expect(await c.redis.hget(sleepStart, lane)).toBeNull();
  });

  it("a dispatch waking a lane into an empty race knows the race: no ZSCORE of it, no read for its first pick", async () => {
    // A throttled lane's wake-up: the race read empty (nothing active), the lane woken into it, its batch sent, asleep
    // again. The ZSCORE asking whether the race held the lane and the first pick's read of the race it just wrote were
    // 2 of its commands; the race is read for the pick after the lane slept again, and by the first look.
    const c = await setup({ bufferTarget: 1000 });
    const { sleep, lanes, tbRpmOrgPrefix } = c.scheduler.keys.named;
    const org = randomOrg();
    const lane = `${org}|${FLASH}`;
    await c.scheduler.setPlan(org, { rpm: { flash: 60 } });
    const ids = await c.add(org, 100);
    expect((await c.scheduler.raw.dispatch()).ids).toEqual(ids.slice(0, 60));
    // Due now with 10 tokens in its bucket (refilled by hand): 10 go, and it sleeps again.
    await c.redis.zadd(sleep, String((await c.redisNow()) - 1000), lane);
    await c.redis.hset(`${tbRpmOrgPrefix}${org}:${FLASH}`, 'tokens', '10', 'ts', String(await c.redisNow()));
    const seen: string[] = [];
    const monitor = await monitorRedis(redisUrl(), (line) => {
      if (line.includes(c.prefix)) seen.push(line);
    });
    const r = await c.scheduler.raw.dispatch();
    const done = `${c.prefix}:monitor-done`;
    await c.redis.set(done, String(Math.random()));
    await vi.waitFor(() => expect(seen.some((l) => l.includes(done))).toBe(true), POLL);
    monitor.close();
    expect(r.ids).toEqual(ids.slice(60, 70));
    const on = (cmd: string) => seen.filter((l) => l.includes(`"${cmd}" "${lanes}"`)).length;
    expect({ zscore: on('ZSCORE'), zrange: on('ZRANGE') }).toEqual({ zscore: 0, zrange: 2 });
    expect(await c.redis.zscore(lanes, lane)).toBeNull();
    expect(Number(await c.redis.zscore(sleep, lane))).toBeGreaterThan(await c.redisNow());
  });

  it('wakes a lane with a minute of its rate waiting for 10 s of tokens, a shallower one for 5 s', async () => {
    const c = await setup({ bufferTarget: 1000 });
    const etaOf = async (waiting: number) => {
      const org = randomOrg();
      await c.scheduler.setPlan(org, { rpm: { flash: 60 } });
      // The bucket's 60 go at once; `waiting` stay in the lane, asleep on the org's 60 RPM (one request a second).
      const ids = await c.add(org, 60 + waiting);
      expect((await c.scheduler.raw.dispatch()).ids).toHaveLength(60);
      const why = await c.scheduler.why(ids[60]);
      expect(why).toMatchObject({ reason: 'rate_limited', limit: `rpm:org:${org}:${FLASH}`, position: 0 });
      return why!.etaMs! - (await c.redisNow());
    };
    // 59 waiting, under a minute of the rate: the wake-up comes when the bucket holds 5 requests.
    const shallow = await etaOf(59);
    expect(shallow).toBeGreaterThan(3_900);
    expect(shallow).toBeLessThanOrEqual(5_100);
    // 60 and more: when it holds 10, so a deep backlog's lane costs half the wake-ups (dispatch, fetches) per job.
    for (const waiting of [60, 200]) {
      const deep = await etaOf(waiting);
      expect(deep).toBeGreaterThan(8_900);
      expect(deep).toBeLessThanOrEqual(10_100);
    }
  });

  it('tells an enqueue the wake-up its dispatch left without handing it over: the next dispatch (a worker\'s) takes it', async () => {
    const c = await setup({ bufferTarget: 1000 });
    const org = randomOrg();
    await c.scheduler.setPlan(org, { rpm: { flash: 1 } });
    const ids = [`${org}-w0`, `${org}-w1`];
    await c.queue.addBulk(ids.map((id) => ({ name: 'j', data: { org }, opts: parkedJobOptions(id) })));
    // An enqueue that dispatches, as the API's does: the first job takes the one request, the lane falls asleep.
    const r = await c.scheduler.enqueue(ids.map((jobId) => ({ jobId, orgId: org, model: FLASH, estTokens: 0 })), { dispatch: true });
    expect(r.promoted).toEqual([ids[0]]);
    expect(r.nextWakeMs).toBeGreaterThan(r.nowMs + 50_000);
    // Reported, not taken: an API process has no timer to arm (taken, the wake-up waited for a worker's safety poll).
    expect(await c.redis.get(c.scheduler.keys.named.wake)).toBeNull();
    const taken = await c.scheduler.dispatch(undefined, { takesWake: true });
    expect(taken.nextWakeMs).toBe(r.nextWakeMs);
    expect(Number(await c.redis.get(c.scheduler.keys.named.wake))).toBe(r.nextWakeMs);
    // Taken once: the next caller is not handed the same wake-up.
    expect((await c.scheduler.dispatch(undefined, { takesWake: true })).nextWakeMs).toBeUndefined();
  });

  it('wakes a lane asleep on its org rate for its backlog when that is smaller than the batch', { timeout: 30_000 }, async () => {
    const c = await setup({ bufferTarget: 1000 });
    const etaOf = async (extra: number) => {
      const org = randomOrg();
      await c.scheduler.setPlan(org, { rpm: { flash: 60 } });
      const ids = await c.add(org, 60 + extra);
      expect((await c.scheduler.raw.dispatch()).ids).toHaveLength(60);
      const why = await c.scheduler.why(ids[60]);
      return why!.etaMs! - (await c.redisNow());
    };
    // One job left: it goes at the first request the bucket refills; two: at the second; forty: at the fifth.
    const [one, two] = [await etaOf(1), await etaOf(2)];
    expect(one).toBeGreaterThan(0);
    expect(one).toBeLessThanOrEqual(1_100);
    expect(two).toBeGreaterThan(1_000);
    expect(two).toBeLessThanOrEqual(2_100);
    // A rate under one request in the batch's time (2 a minute) wakes at its first request, as before.
    const org = randomOrg();
    await c.scheduler.setPlan(org, { rpm: { flash: 2 } });
    const ids = await c.add(org, 10);
    expect((await c.scheduler.raw.dispatch()).ids).toHaveLength(2);
    const eta = (await c.scheduler.why(ids[2]))!.etaMs! - (await c.redisNow());
    expect(eta).toBeGreaterThan(25_000);
    expect(eta).toBeLessThanOrEqual(30_100);
  });

  it('recovers slots after a crash: parked -> back to lane, finished -> freed, active -> extended', async () => {
    const c = await setup({ leaseMs: 300 });
    const org = randomOrg();
    await c.scheduler.setPlan(org, { concurrency: 3 });
    const ids = await c.add(org, 5);
    // A lease whose job is still parked: what a dispatch of an earlier version (which promoted in a call of its
    // own) left when it crashed between the two. The dispatch is undone in BullMQ, the leases are kept.
    const parkedAt = await Promise.all(ids.slice(0, 3).map((id) => c.redis.zscore(c.queue.toKey('delayed'), id)));
    expect((await c.scheduler.raw.dispatch()).ids).toEqual(ids.slice(0, 3));
    for (const [i, id] of ids.slice(0, 3).entries()) {
      await c.redis.multi().lrem(c.queue.toKey('wait'), 0, id).zadd(c.queue.toKey('delayed'), parkedAt[i]!, id).exec();
    }
    expect(await c.queue.getDelayedCount()).toBe(5);
    expect((await c.scheduler.why(ids[3]))?.reason).toBe('org_concurrency');
    await vi.waitFor(async () => expect((await c.scheduler.dispatch()).promoted).toEqual(ids.slice(0, 3)), { ...POLL, interval: 50 });
    expect((await c.scheduler.orgStats(org)).inFlight).toBe(3);
    expect(await c.queue.getJobCountByTypes('waiting', 'prioritized')).toBe(3);

    // ids[0] finishes (no release call: the worker "died" before it), ids[1..2] stay active.
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    c.worker(async (job) => {
      if (job.id !== ids[0]) await gate;
    }, 5);
    cleanups.push(async () => open()); // runs before the worker's close (cleanups run in reverse)
    await vi.waitFor(async () => {
      expect(await c.queue.getJobState(ids[0])).toBe('completed');
      expect(await c.queue.getActiveCount()).toBe(2);
    }, { timeout: 10_000, interval: 50 });
    await vi.waitFor(async () => expect((await c.scheduler.dispatch()).promoted).toEqual([ids[3]]), { ...POLL, interval: 50 });
    const now = await c.redisNow();
    const leases = await c.redis.zrange(c.scheduler.keys.leases, 0, -1, 'WITHSCORES');
    const leased = new Map<string, number>();
    for (let i = 0; i < leases.length; i += 2) leased.set(leases[i], Number(leases[i + 1]));
    expect([...leased.keys()].sort()).toEqual([ids[1], ids[2], ids[3]].sort());
    for (const d of leased.values()) expect(d).toBeGreaterThan(now);
    expect((await c.scheduler.orgStats(org)).inFlight).toBe(3);
    expect((await c.scheduler.dispatch()).promoted).toEqual([]);
    expect((await c.scheduler.why(ids[4]))?.reason).toBe('org_concurrency');
  }, waitsTimeout(POLL.timeout, 10_000, POLL.timeout));

  it('repark frees the slot and brings the job back after its backoff', { timeout: 30_000 }, async () => {
    const c = await setup();
    const org = randomOrg();
    await c.scheduler.setPlan(org, { concurrency: 1 });
    const ids = await c.add(org, 2);
    const loop = c.loop();
    const runs: Array<{ id: string; at: number }> = [];
    let reparkedAt = 0;
    let whyDuringBackoff: unknown;
    const w = c.worker(async (job, token) => {
      runs.push({ id: job.id!, at: Date.now() });
      if (job.id === ids[0] && runs.filter((r) => r.id === ids[0]).length === 1) {
        await parkActiveJob(job, token!);
        reparkedAt = Date.now();
        expect(await c.scheduler.repark(job.id, 400, 'retry_backoff:1', job.attemptsStarted)).toBe(true);
        whyDuringBackoff = await c.scheduler.why(job.id);
        void loop.kick();
        throw new DelayedError();
      }
    }, 2);
    const completed: string[] = [];
    w.on('completed', (job) => {
      completed.push(job.id!);
      void c.scheduler.release([job.id!]).then(() => loop.kick());
    });
    await loop.kick();
    await vi.waitFor(() => expect(completed).toHaveLength(2), { timeout: 10_000, interval: 20 });
    expect(completed).toEqual([ids[1], ids[0]]);
    expect(whyDuringBackoff).toMatchObject({ reason: 'retry_backoff', limit: 'retry_backoff:1' });
    const second = runs.filter((r) => r.id === ids[0])[1];
    expect(second.at).toBeGreaterThanOrEqual(reparkedAt + 390);
    expect((await c.scheduler.orgStats(org)).inFlight).toBe(0);
  });

  it('promoteAll makes every timer of the shard due in script calls of 500 ids at most, then dispatches once: an org at its cap gets only its cap', { timeout: 60_000 }, async () => {
    const c = await setup();
    const [a, b] = [randomOrg(), randomOrg()];
    await c.scheduler.setPlan(a, { concurrency: 2 });
    // 1,200 jobs on a 60 s delay, half of each org: more than two script calls' worth.
    const jobs = Array.from({ length: 1200 }, (_, i) => ({ org: i % 2 ? b : a, id: `${i % 2 ? b : a}-timed-${i}` }));
    for (let i = 0; i < jobs.length; i += 600) await c.queue.addBulk(jobs.slice(i, i + 600).map(({ id }) => ({ name: 'j', data: {}, opts: parkedJobOptions(id) })));
    const r = await c.scheduler.enqueue(jobs.map(({ id, org }) => ({ jobId: id, orgId: org, model: FLASH, estTokens: 0, delayMs: 60_000 })));
    expect(r).toMatchObject({ promoted: [], skipped: [] });
    expect(await c.redis.zcard(c.scheduler.keys.named.timers)).toBe(1200);

    const promoteCalls = vi.spyOn(c.scheduler.raw, 'promote');
    const dispatchCalls = vi.spyOn(c.scheduler.raw, 'dispatch');
    expect(await c.scheduler.promoteAll()).toBe(1200);
    expect(await c.redis.zcard(c.scheduler.keys.named.timers)).toBe(0);
    // Bounded calls, none dispatching: every id once (each on its timer when its call came).
    expect(promoteCalls.mock.calls.length).toBeGreaterThanOrEqual(3);
    for (const [chunk, thenDispatch] of promoteCalls.mock.calls) {
      expect(chunk.length).toBeLessThanOrEqual(500);
      expect(thenDispatch).toBe(false);
    }
    expect(new Set(promoteCalls.mock.calls.flatMap(([chunk]) => chunk)).size).toBe(1200);
    // One dispatch after the last call, with both orgs laned: a's two slots, the rest of the batch b's.
    expect(dispatchCalls).toHaveBeenCalledTimes(1);
    const out = (await dispatchCalls.mock.results[0].value) as { ids: string[] };
    expect(out.ids.filter((id) => id.startsWith(`${a}-`))).toHaveLength(2);
    expect(out.ids.filter((id) => id.startsWith(`${b}-`)).length).toBeGreaterThan(100);
    expect(await c.scheduler.orgStats(a)).toMatchObject({ inFlight: 2, waiting: 598, backoff: 0 });
    expect(await c.scheduler.orgStats(b)).toMatchObject({ backoff: 0 });
    // Nothing left on a timer: a second promote-all makes nothing due.
    expect(await c.scheduler.promoteAll()).toBe(0);
  });

  it("a dispatch's charge stores a whole level as an integer, as the rate limiter's take does", async () => {
    // The dispatch parses the buckets by arithmetic and writes a whole level with `%d`: the digits `%.17g` gave it.
    const c = await setup();
    const org = randomOrg();
    await c.scheduler.setPlan(org, { concurrency: 5, rpm: { flash: 10 }, tpm: 1000 });
    const ids = await c.add(org, 2, { est: 300 });
    expect((await c.scheduler.raw.dispatch()).ids).toEqual(ids);
    const [rpm, tpm] = await Promise.all(['rpm', 'tpm'].map((b) => c.redis.hmget(`${c.prefix}:tb:${b}:org:${org}:${FLASH}`, 'tokens', 'ts')));
    expect(rpm[0]).toBe('8');
    expect(tpm[0]).toBe('400');
    expect(rpm[1]).toMatch(/^\d+\.\d{3}$/);
    expect(tpm[1]).toBe(rpm[1]);
    // 600 tokens at 1000 a minute refill in 36 s, plus the 1 s margin.
    const ttl = await c.redis.pttl(`${c.prefix}:tb:tpm:org:${org}:${FLASH}`);
    expect(ttl).toBeGreaterThan(36_000);
    expect(ttl).toBeLessThanOrEqual(37_000);
  });

  it("a dispatch's charge that empties a bucket stores its level as 0, the text `%.17g` gave it", async () => {
    // fmt (includes/number-format.lua) writes zero with `%d` now, fair-core's own fmt wrote it with `%.17g`: both "0".
    const c = await setup();
    const org = randomOrg();
    await c.scheduler.setPlan(org, { concurrency: 5, rpm: { flash: 2 }, tpm: 600 });
    const ids = await c.add(org, 2, { est: 300 });
    expect((await c.scheduler.raw.dispatch()).ids).toEqual(ids);
    const levels = await Promise.all(['rpm', 'tpm'].map((b) => c.redis.hget(`${c.prefix}:tb:${b}:org:${org}:${FLASH}`, 'tokens')));
    expect(levels).toEqual(['0', '0']);
  });

  it('cancel removes a waiting job, and frees the slot (and the charge) of one dispatched but not started', async () => {
    const c = await setup();
    const org = randomOrg();
    await c.scheduler.setPlan(org, { concurrency: 1, rpm: { flash: 10 }, tpm: 1000 });
    const ids = await c.add(org, 3, { est: 300 });
    expect((await c.scheduler.raw.dispatch()).ids).toEqual([ids[0]]);
    const rpmBucket = `${c.prefix}:tb:rpm:org:${org}:${FLASH}`;
    const tpmBucket = `${c.prefix}:tb:tpm:org:${org}:${FLASH}`;
    expect(Number(await c.redis.hget(tpmBucket, 'tokens'))).toBeLessThan(701);
    expect(await c.scheduler.cancel(ids[2])).toBe(true);
    expect(await c.scheduler.why(ids[2])).toBeNull();
    expect(await c.scheduler.cancel(ids[2])).toBe(false);
    expect((await c.scheduler.orgStats(org)).inFlight).toBe(1);
    expect(await c.scheduler.cancel(ids[0])).toBe(true);
    // Its slot went to the org's next job in the cancel's own call (a release's dispatch), not at a later one.
    expect(await c.queue.getJobState(ids[1])).toBe('waiting');
    expect((await c.scheduler.orgStats(org)).waiting).toBe(0);
    expect((await c.scheduler.orgStats(org)).inFlight).toBe(1);
    // It never ran: the request and the estimate came back before the next job's were taken, so the buckets hold
    // one job's charge (the bucket refilled to its cap by the refund, less the next job's), not two.
    expect(Number(await c.redis.hget(tpmBucket, 'tokens'))).toBeGreaterThan(699);
    expect(Number(await c.redis.hget(tpmBucket, 'tokens'))).toBeLessThan(701);
    expect(Number(await c.redis.hget(rpmBucket, 'tokens'))).toBeGreaterThan(8.99);
    expect(Number(await c.redis.hget(rpmBucket, 'tokens'))).toBeLessThan(9.01);
    expect(await c.scheduler.cancel(ids[0])).toBe(false);
    expect((await c.scheduler.release([ids[0]])).freed).toBe(0);
    expect((await c.scheduler.raw.dispatch()).ids).toEqual([]);
  });

  it('cancel leaves a dispatched job a worker has fetched to that worker: its slot and its charge stay until it ends', async () => {
    const c = await setup();
    const org = randomOrg();
    await c.scheduler.setPlan(org, { concurrency: 1, rpm: { flash: 10 } });
    const [id] = await c.add(org, 1);
    expect((await c.scheduler.raw.dispatch()).ids).toEqual([id]);
    const rpmBucket = `${c.prefix}:tb:rpm:org:${org}:${FLASH}`;
    const charged = await c.redis.hget(rpmBucket, 'tokens');
    // BullMQ's lock, as a worker's fetch takes it (the claim may come before or after the cancel).
    await c.redis.set(`${c.queue.toKey(id)}:lock`, 'worker-token');
    expect(await c.scheduler.cancel(id)).toBe(false);
    expect((await c.scheduler.orgStats(org)).inFlight).toBe(1);
    expect(await c.redis.hget(rpmBucket, 'tokens')).toBe(charged);
    // The worker ends it: its release frees the slot, once.
    expect((await c.scheduler.release([id])).freed).toBe(1);
    expect((await c.scheduler.orgStats(org)).inFlight).toBe(0);
  });

  it('cancel leaves the slot of a dispatched job that already ended to its worker\'s release: its charge is not given back twice', async () => {
    const c = await setup();
    const org = randomOrg();
    await c.scheduler.setPlan(org, { concurrency: 1, rpm: { flash: 10 }, tpm: 1000 });
    const [id] = await c.add(org, 1, { est: 300 });
    expect((await c.scheduler.raw.dispatch()).ids).toEqual([id]);
    const rpmBucket = `${c.prefix}:tb:rpm:org:${org}:${FLASH}`;
    const tpmBucket = `${c.prefix}:tb:tpm:org:${org}:${FLASH}`;
    const charged = await c.redis.hmget(rpmBucket, 'tokens', 'ts');
    const chargedTpm = await c.redis.hmget(tpmBucket, 'tokens', 'ts');
    // A worker fetches it and ends it: BullMQ's lock goes with the end, and the slot waits for the worker's
    // release (the fair gate's, batched: with the attempt's refund or usage correction), not sent yet.
    const w = c.worker(async () => 'done');
    await new Promise((resolve) => w.once('completed', resolve));
    expect(await c.redis.exists(`${c.queue.toKey(id)}:lock`)).toBe(0);
    // A cancel that comes now (the API's, as the job finished) finds it neither waiting nor running.
    expect(await c.scheduler.cancel(id)).toBe(false);
    expect((await c.scheduler.orgStats(org)).inFlight).toBe(1);
    expect(await c.redis.hmget(rpmBucket, 'tokens', 'ts')).toEqual(charged);
    expect(await c.redis.hmget(tpmBucket, 'tokens', 'ts')).toEqual(chargedTpm);
    expect((await c.scheduler.release([id])).freed).toBe(1);
    expect((await c.scheduler.orgStats(org)).inFlight).toBe(0);
  });

  it('a laned job removed in BullMQ alone (Bull Board\'s remove, clean, empty) is dropped by the dispatch: no slot, no charge, its lane\'s next job goes', async () => {
    // Leases far longer than the test: the next job may not owe its dispatch to the lease sweep.
    const c = await setup({ leaseMs: 60_000, modelLimits: () => ({ rpm: 100, tpm: 100_000 }) });
    const org = randomOrg();
    await c.scheduler.setPlan(org, { concurrency: 1, rpm: { flash: 10 }, tpm: 10_000 });
    const ids = await c.add(org, 4, { est: 300 });
    // What the board's remove does (job.remove()) and its clean of `delayed` (queue.clean): BullMQ's job gone,
    // the dispatcher not told.
    await c.queue.remove(ids[0]);
    expect(await c.queue.clean(0, 1, 'delayed')).toEqual([ids[1]]);
    expect(await c.queue.getJob(ids[1])).toBeUndefined();
    const r = await c.scheduler.raw.dispatch();
    expect(r.ids).toEqual([ids[2]]);
    expect((await c.scheduler.orgStats(org)).inFlight).toBe(1);
    expect(await c.redis.zrange(c.scheduler.keys.leases, 0, -1)).toEqual([ids[2]]);
    expect(await c.redis.zrange(`${c.scheduler.keys.named.lanePrefix}${org}|${FLASH}`, 0, -1)).toEqual([ids[3]]);
    expect(await c.redis.exists(c.scheduler.keys.named.jobPrefix + ids[0], c.scheduler.keys.named.jobPrefix + ids[1])).toBe(0);
    // One job's charge in every bucket, not three (a full bucket that was charged once holds cap - cost, refilling).
    const level = async (bucket: string, cap: number) => {
      const [tokens, ts] = await c.redis.hmget(`${c.prefix}:tb:${bucket}`, 'tokens', 'ts');
      return tokens === null ? cap : Math.min(cap, Number(tokens) + ((await c.redisNow()) - Number(ts)) * (cap / 60_000));
    };
    expect(await level(`rpm:org:${org}:${FLASH}`, 10)).toBeGreaterThanOrEqual(9 - 0.01);
    expect(await level(`rpm:model:${FLASH}`, 100)).toBeGreaterThanOrEqual(99 - 0.01);
    expect(await level(`tpm:org:${org}:${FLASH}`, 10_000)).toBeGreaterThanOrEqual(9_700 - 1);
    expect(await level(`tpm:model:${FLASH}`, 100_000)).toBeGreaterThanOrEqual(99_700 - 1);
    // Charged once, not never: the level as stored by the dispatch (the refill since then depends on how slow the
    // machine is, and on a loaded one climbs past any fixed margin within tens of milliseconds).
    const stored = await c.redis.hget(`${c.prefix}:tb:tpm:org:${org}:${FLASH}`, 'tokens');
    expect(stored).not.toBeNull();
    expect(Number(stored)).toBeGreaterThanOrEqual(9_700 - 1);
    expect(Number(stored)).toBeLessThan(9_700 + 5);
  });

  it('removed forgets at once what it holds for jobs BullMQ removed: slots (their charge too with refund), lanes; a job that exists is not touched', async () => {
    const c = await setup({ modelLimits: () => ({ rpm: 100 }) });
    const org = randomOrg();
    await c.scheduler.setPlan(org, { concurrency: 2, rpm: { flash: 10 } });
    const ids = await c.add(org, 4);
    expect((await c.scheduler.raw.dispatch()).ids).toEqual([ids[0], ids[1]]);
    const rpmBucket = `${c.prefix}:tb:rpm:org:${org}:${FLASH}`;
    const charged = Number(await c.redis.hget(rpmBucket, 'tokens'));
    expect(charged).toBeLessThan(8.1);
    // BullMQ alone removes one dispatched job (from its wait list) and one laned job.
    await c.queue.remove(ids[0]);
    await c.queue.remove(ids[2]);
    expect(await c.scheduler.removed([ids[0], ids[1], ids[2]], { refund: true })).toEqual({ freed: 1, forgotten: 2 });
    // The freed slot went to the lane's next job in the same call (as a cancel's does).
    expect(await c.redis.zrange(c.scheduler.keys.leases, 0, -1)).toEqual([ids[1], ids[3]]);
    expect(await c.queue.getJobState(ids[3])).toBe('waiting');
    expect(await c.redis.zrange(`${c.scheduler.keys.named.lanePrefix}${org}|${FLASH}`, 0, -1)).toEqual([]);
    expect(await c.redis.exists(c.scheduler.keys.named.jobPrefix + ids[0], c.scheduler.keys.named.jobPrefix + ids[2])).toBe(0);
    // One request back, the removed job's (the other dispatched job's is still spent), and taken again by ids[3]'s
    // dispatch: without the refund the bucket would be a request lower.
    expect(Number(await c.redis.hget(rpmBucket, 'tokens'))).toBeGreaterThanOrEqual(charged - 0.01);
    expect((await c.scheduler.orgStats(org)).inFlight).toBe(2);
    // Without ids: every slot is looked at; without refund the charge stays.
    await c.queue.remove(ids[1]);
    const before = Number(await c.redis.hget(rpmBucket, 'tokens'));
    expect(await c.scheduler.removed()).toEqual({ freed: 1, forgotten: 1 });
    expect((await c.scheduler.orgStats(org)).inFlight).toBe(1);
    expect(Number(await c.redis.hget(rpmBucket, 'tokens'))).toBeLessThan(before + 0.5);
    expect((await c.scheduler.raw.dispatch()).ids).toEqual([]);
  });

  it('drops at most sweepMax removed jobs per dispatch, leaves the lane in the race and says there is more', async () => {
    const c = await setup({ sweepMax: 3 });
    const org = randomOrg();
    const ids = await c.add(org, 8);
    for (const id of ids.slice(0, 7)) await c.queue.remove(id);
    const lane = `${org}|${FLASH}`;
    const first = await c.scheduler.raw.dispatch();
    expect(first).toMatchObject({ ids: [], more: true });
    expect(await c.redis.zcard(`${c.scheduler.keys.named.lanePrefix}${lane}`)).toBe(5);
    expect(await c.redis.zscore(c.scheduler.keys.named.lanes, lane)).not.toBeNull();
    expect((await c.scheduler.raw.dispatch()).ids).toEqual([]);
    expect((await c.scheduler.raw.dispatch()).ids).toEqual([ids[7]]);
    expect((await c.scheduler.orgStats(org)).inFlight).toBe(1);
  });

  it('blockModel puts that model\'s lanes to sleep until the time, then wakes them', async () => {
    const c = await setup();
    const org = randomOrg();
    const flash = await c.add(org, 2, { model: FLASH });
    const pro = await c.add(org, 2, { model: PRO });
    const before = await c.redisNow();
    await c.scheduler.blockModel(PRO, 500, 'breaker_open');
    // 500 ms from the script's own Redis TIME.
    const until = Number(await c.redis.hget(c.scheduler.keys.named.modelBlock, PRO));
    expect(until).toBeGreaterThanOrEqual(before + 500);
    expect(until).toBeLessThanOrEqual((await c.redisNow()) + 500);
    const r = await c.scheduler.dispatch();
    expect(r.promoted).toEqual(flash);
    expect(r.nextWakeMs).toBe(until);
    expect(await c.scheduler.why(pro[0])).toMatchObject({ reason: 'breaker_open', limit: 'breaker_open', etaMs: until, position: 0 });
    expect((await c.scheduler.dispatch()).promoted).toEqual([]);
    let woke: DispatchResult | undefined;
    await vi.waitFor(async () => {
      const d = await c.scheduler.dispatch();
      expect(d.promoted).toEqual(pro);
      woke = d;
    }, { ...POLL, interval: 50 });
    expect(woke!.nowMs).toBeGreaterThanOrEqual(until);
  });

  it("a model block keeps the later time: a per-day quota's block until midnight survives a later 20 s provider_rate_limited block", async () => {
    const c = await setup();
    const org = randomOrg();
    const pro = await c.add(org, 1, { model: PRO });
    // The per-day quota is spent: blocked until the reset (here 8 h away, as midnight Pacific can be).
    await c.scheduler.blockModel(PRO, 8 * 3600_000, 'provider_quota');
    const midnight = Number(await c.redis.hget(c.scheduler.keys.named.modelBlock, PRO));
    // A call already in flight then gets a per-minute 429, and its defer blocks the model for 20 s.
    await c.scheduler.blockModel(PRO, 20_000, 'provider_rate_limited');
    expect(Number(await c.redis.hget(c.scheduler.keys.named.modelBlock, PRO))).toBe(midnight);
    expect(await c.redis.hget(c.scheduler.keys.named.modelBlockWhy, PRO)).toBe('provider_quota');
    const r = await c.scheduler.dispatch();
    expect(r.promoted).toEqual([]);
    expect(r.nextWakeMs).toBe(midnight);
    expect(await c.scheduler.why(pro[0])).toMatchObject({ reason: 'provider_quota', etaMs: midnight });
    // A later block still extends it.
    await c.scheduler.blockModel(PRO, 8 * 3600_000 + 1000, 'breaker_open');
    expect(Number(await c.redis.hget(c.scheduler.keys.named.modelBlock, PRO))).toBeGreaterThanOrEqual(midnight + 1000);
    expect(await c.redis.hget(c.scheduler.keys.named.modelBlockWhy, PRO)).toBe('breaker_open');
  });

  it("a delay of 0 or less (or an older worker's absolute until already past) never lifts a model block that stands", async () => {
    const c = await setup();
    const org = randomOrg();
    const pro = await c.add(org, 1, { model: PRO });
    await c.scheduler.blockModel(PRO, 60_000, 'provider_rate_limited');
    const until = Number(await c.redis.hget(c.scheduler.keys.named.modelBlock, PRO));
    await c.scheduler.blockModel(PRO, -5, 'breaker_open');
    await c.scheduler.blockModel(PRO, (await c.redisNow()) - 5, 'breaker_open');
    expect(Number(await c.redis.hget(c.scheduler.keys.named.modelBlock, PRO))).toBe(until);
    expect(await c.redis.hget(c.scheduler.keys.named.modelBlockWhy, PRO)).toBe('provider_rate_limited');
    expect((await c.scheduler.dispatch()).promoted).toEqual([]);
    expect(await c.scheduler.why(pro[0])).toMatchObject({ reason: 'provider_rate_limited', etaMs: until });
  });

  it('a model block that has lapsed is tidied away by an until already past; a new block then stands as given', async () => {
    const c = await setup();
    await c.scheduler.blockModel(PRO, 50, 'breaker_open');
    const until = Number(await c.redis.hget(c.scheduler.keys.named.modelBlock, PRO));
    await vi.waitFor(async () => expect(await c.redisNow()).toBeGreaterThan(until), { ...POLL, interval: 10 });
    await c.scheduler.blockModel(PRO, 0, 'breaker_open');
    expect(await c.redis.hget(c.scheduler.keys.named.modelBlock, PRO)).toBeNull();
    expect(await c.redis.hget(c.scheduler.keys.named.modelBlockWhy, PRO)).toBeNull();
    const now = await c.redisNow();
    await c.scheduler.blockModel(PRO, 10_000, 'provider_rate_limited');
    expect(Number(await c.redis.hget(c.scheduler.keys.named.modelBlock, PRO))).toBeGreaterThanOrEqual(now + 10_000);
  });

  it('applies TPM corrections carried by a claim or a release to the org\'s and the model\'s buckets, where limited', async () => {
    const c = await setup({ modelLimits: () => ({ tpm: 6000 }) });
    const org = randomOrg();
    const unlimited = randomOrg();
    await c.scheduler.setPlan(org, { tpm: 1000 });
    const ids = await c.add(org, 3, { est: 400 });
    const [free] = await c.add(unlimited, 1, { est: 400 });
    // Order between the two orgs is a tie (equal weights): only the set matters here.
    const t0 = await c.redisNow();
    expect([...(await c.scheduler.dispatch()).promoted].sort()).toEqual([ids[0], free, ids[1]].sort());
    // Upper bounds allow what the bucket refilled since the dispatch: a busy machine stretches the test.
    const refilled = async (cap: number) => ((await c.redisNow()) - t0) * (cap / 60_000) + 1;
    const level = async (bucket: string, cap: number) => {
      const [tokens, ts] = await c.redis.hmget(`${c.prefix}:tb:${bucket}`, 'tokens', 'ts');
      return tokens === null ? cap : Math.min(cap, Number(tokens) + ((await c.redisNow()) - Number(ts)) * (cap / 60_000));
    };
    // Charged the estimates: 2 x 400 to the org (1000/min), 3 x 400 to the model (6000/min).
    expect(await level(`tpm:org:${org}:${FLASH}`, 1000)).toBeLessThan(201 + (await refilled(1000)));
    expect(await level(`tpm:model:${FLASH}`, 6000)).toBeLessThan(4801 + (await refilled(6000)));
    // ids[0] used 100 (refund 300 to both); the unlimited org's call used 900 (500 more, to the model only).
    await c.scheduler.claim(ids[1], undefined, { correct: [{ org, model: FLASH, orgDelta: -300, modelDelta: -300, requests: 0 }, { org: unlimited, model: FLASH, orgDelta: 500, modelDelta: 500, requests: 0 }] });
    expect(await level(`tpm:org:${org}:${FLASH}`, 1000)).toBeGreaterThanOrEqual(500 - 1);
    expect(await level(`tpm:org:${org}:${FLASH}`, 1000)).toBeLessThan(500 + (await refilled(1000)));
    expect(await level(`tpm:model:${FLASH}`, 6000)).toBeGreaterThanOrEqual(4600 - 1);
    expect(await level(`tpm:model:${FLASH}`, 6000)).toBeLessThan(4600 + (await refilled(6000)));
    expect(await c.redis.exists(`${c.prefix}:tb:tpm:org:${unlimited}:${FLASH}`)).toBe(0);
    // A release carries them too (with no slot to free): the org is back to room for its third job.
    expect(await c.scheduler.release([], { correct: [{ org, model: FLASH, orgDelta: -300, modelDelta: 0, requests: 0 }] })).toMatchObject({ freed: 0 });
    expect(await level(`tpm:org:${org}:${FLASH}`, 1000)).toBeGreaterThanOrEqual(800 - 1);
    await c.scheduler.wakeOrg(org);
    expect((await c.scheduler.dispatch()).promoted).toEqual([ids[2]]);
  });

  it('a refund to a full bucket writes nothing and looks for no lane to wake (a throttled org\'s release)', async () => {
    const c = await setup({ modelLimits: () => ({ tpm: 6000 }) });
    const org = randomOrg();
    await c.scheduler.setPlan(org, { tpm: 1000 });
    const ids = await c.add(org, 1, { est: 400 });
    expect((await c.scheduler.dispatch()).promoted).toEqual(ids);
    const orgTpm = `${c.prefix}:tb:tpm:org:${org}:${FLASH}`;
    const modelTpm = `${c.prefix}:tb:tpm:model:${FLASH}`;
    // The model's bucket refilled the 400 since (a full one has no key); the org's still lacks most of them.
    await c.redis.del(modelTpm);
    const seen: string[] = [];
    const monitor = await monitorRedis(redisUrl(), (line) => {
      if (line.includes(c.prefix)) seen.push(line);
    });
    // The job used 100 of its 400: 300 back to both buckets, as a worker's release carries it.
    expect(await c.scheduler.release(ids, { dispatch: true, correct: [{ org, model: FLASH, orgDelta: -300, modelDelta: -300, requests: 0 }] })).toMatchObject({ freed: 1 });
    const done = `${c.prefix}:monitor-done`;
    await c.redis.get(done);
    await vi.waitFor(() => expect(seen.some((l) => l.includes(done))).toBe(true), POLL);
    monitor.close();
    // The org's bucket took the 300 back; the full model bucket was not written (it was deleted before, one by one).
    expect(seen.filter((l) => l.includes(`"${orgTpm}"`) && l.includes('"HSET"'))).toHaveLength(1);
    expect(seen.filter((l) => l.includes(`"${modelTpm}"`) && !l.includes('"HMGET"'))).toEqual([]);
    expect(await c.redis.exists(modelTpm)).toBe(0);
    // The org's lanes were looked at once, for its own refunded bucket: not again for the model's.
    expect(seen.filter((l) => l.includes('"SMEMBERS"'))).toHaveLength(1);
    // The model's limits were read for the correction, not its block: no lane of the model was tried.
    const { modelLimits, modelBlock } = c.scheduler.keys.named;
    expect(seen.filter((l) => l.includes(`"${modelLimits}"`))).toHaveLength(1);
    expect(seen.filter((l) => l.includes(`"${modelBlock}"`))).toEqual([]);
    // With nothing refunded but to full buckets, none at all.
    seen.length = 0;
    await c.redis.del(orgTpm);
    const monitor2 = await monitorRedis(redisUrl(), (line) => {
      if (line.includes(c.prefix)) seen.push(line);
    });
    await c.scheduler.release([], { dispatch: true, correct: [{ org, model: FLASH, orgDelta: -50, modelDelta: -50, requests: 0 }] });
    await c.redis.get(done);
    await vi.waitFor(() => expect(seen.some((l) => l.includes(done))).toBe(true), POLL);
    monitor2.close();
    expect(seen.filter((l) => /"(DEL|HSET|PEXPIRE|SMEMBERS)"/.test(l))).toEqual([]);
  });

  it('gives back the request and estimate a dispatch charged for a job that called no model, and wakes the org\'s lane asleep on that bucket', async () => {
    const c = await setup({ modelLimits: () => ({ rpm: 100 }) });
    const org = randomOrg();
    await c.scheduler.setPlan(org, { rpm: { flash: 1 }, tpm: 1000 });
    const ids = await c.add(org, 2, { est: 400 });
    // The org's one request a minute goes to ids[0]; ids[1]'s lane sleeps on the emptied bucket.
    expect((await c.scheduler.dispatch()).promoted).toEqual([ids[0]]);
    const orgRpm = `${c.prefix}:tb:rpm:org:${org}:${FLASH}`;
    expect(await c.redis.hget(`${c.prefix}:fq:sleepwhy`, `${org}|${FLASH}`)).toBe(orgRpm);
    const level = async (bucket: string, cap: number) => {
      const [tokens, ts] = await c.redis.hmget(`${c.prefix}:tb:${bucket}`, 'tokens', 'ts');
      return tokens === null ? cap : Math.min(cap, Number(tokens) + ((await c.redisNow()) - Number(ts)) * (cap / 60_000));
    };
    expect(await level(`rpm:model:${FLASH}`, 100)).toBeLessThan(99.1);
    // A charge that is not a refund wakes nothing; nor does a refund of a bucket the lane does not sleep on
    // (TPM given back while it waits for a request).
    expect(await c.scheduler.release([], { dispatch: true, correct: [{ org, model: FLASH, orgDelta: 10, modelDelta: 0, requests: 0 }] })).toMatchObject({ freed: 0, due: false });
    expect(await c.scheduler.release([], { dispatch: true, correct: [{ org, model: FLASH, orgDelta: -10, modelDelta: 0, requests: 0 }] })).toMatchObject({ freed: 0, due: false });
    // ids[0] was answered from the cache: its finish carries the refund, which wakes the lane, and the same
    // call dispatches ids[1] with the request given back.
    const rel = await c.scheduler.release([ids[0]], { dispatch: true, correct: [{ org, model: FLASH, orgDelta: -400, modelDelta: -400, requests: -1 }] });
    expect(rel).toMatchObject({ freed: 1, due: true });
    expect(rel.dispatched?.promoted).toEqual([ids[1]]);
    // Each bucket holds one charge again (ids[1]'s), not two; the org's TPM was charged 10 and given 10 above.
    expect(await level(`rpm:model:${FLASH}`, 100)).toBeGreaterThanOrEqual(99 - 0.01);
    expect(await level(`rpm:model:${FLASH}`, 100)).toBeLessThan(99.1);
    expect(await level(`tpm:org:${org}:${FLASH}`, 1000)).toBeGreaterThanOrEqual(600 - 1);
    expect(await level(`tpm:org:${org}:${FLASH}`, 1000)).toBeLessThan(600 + 5);
  });

  it('a claim carrying charge corrections with its releases applies them first: a refund wakes the lane asleep on its bucket, and the freed slot goes out in the same call', async () => {
    const c = await setup({ modelLimits: () => ({ rpm: 100 }), bufferTarget: 5 });
    const org = randomOrg();
    await c.scheduler.setPlan(org, { rpm: { flash: 1 }, tpm: 1000 });
    const ids = await c.add(org, 3, { est: 400 });
    expect((await c.scheduler.dispatch()).promoted).toEqual([ids[0]]);
    const orgRpm = `${c.prefix}:tb:rpm:org:${org}:${FLASH}`;
    expect(await c.redis.hget(`${c.prefix}:fq:sleepwhy`, `${org}|${FLASH}`)).toBe(orgRpm);
    await c.redis.lrem(c.queue.toKey('wait'), 0, ids[0]);
    // ids[0] was answered from the cache: a claim of another job (its slot lost) carries its release and refund.
    const r = await c.scheduler.claim('no-such-job', undefined, { release: [ids[0]], correct: [{ org, model: FLASH, orgDelta: -400, modelDelta: -400, requests: -1 }] });
    expect(r).toMatchObject({ held: false, cancelled: false });
    // The request given back goes to ids[1] (one a minute: not ids[2] as well).
    expect(await r.dispatched).toMatchObject({ promoted: [ids[1]] });
    expect((await c.scheduler.orgStats(org)).inFlight).toBe(1);
  });

  it('a claim carrying charge corrections that wake no lane frees the slots it hands over and fills them, or answers with nothing due', async () => {
    const c = await setup({ bufferTarget: 5 });
    const org = randomOrg();
    await c.scheduler.setPlan(org, { concurrency: 1, tpm: 1000 });
    const ids = await c.add(org, 2, { est: 400 });
    expect((await c.scheduler.dispatch()).promoted).toEqual([ids[0]]);
    await c.redis.lrem(c.queue.toKey('wait'), 0, ids[0]);
    const level = async () => {
      const [tokens, ts] = await c.redis.hmget(`${c.prefix}:tb:tpm:org:${org}:${FLASH}`, 'tokens', 'ts');
      return tokens === null ? 1000 : Math.min(1000, Number(tokens) + ((await c.redisNow()) - Number(ts)) * (1000 / 60_000));
    };
    // ids[0] used 100 of its 400: 300 back, and its slot (the org's cap) goes to ids[1], charged its 400.
    const r = await c.scheduler.claim('no-such-job', undefined, { release: [ids[0]], correct: [{ org, model: FLASH, orgDelta: -300, modelDelta: -300, requests: 0 }] });
    expect(await r.dispatched).toMatchObject({ promoted: [ids[1]] });
    expect(await level()).toBeGreaterThanOrEqual(500 - 1);
    expect(await level()).toBeLessThan(500 + 20);
    await c.redis.lrem(c.queue.toKey('wait'), 0, ids[1]);
    // Nothing left to dispatch: the release and the correction are done and the claim answers as it came.
    const last = await c.scheduler.claim('no-such-job-2', undefined, { release: [ids[1]], correct: [{ org, model: FLASH, orgDelta: -400, modelDelta: -400, requests: 0 }] });
    expect(last).toEqual({ held: false, cancelled: false });
    expect((await c.scheduler.orgStats(org)).inFlight).toBe(0);
    expect(await level()).toBeGreaterThanOrEqual(900 - 1);
  });

  it('charges TPM in the token-bucket format, so the guards adjust() refund is seen by the next dispatch', async () => {
    const c = await setup();
    const org = randomOrg();
    await c.scheduler.setPlan(org, { tpm: 1000 });
    const ids = await c.add(org, 3, { est: 400 });
    expect((await c.scheduler.dispatch()).promoted).toEqual(ids.slice(0, 2));
    expect(await c.scheduler.why(ids[2])).toMatchObject({ reason: 'rate_limited', limit: `tpm:org:${org}:${FLASH}` });
    // The first two used 100 tokens each, not 400: the worker refunds 600 with the existing script.
    const buckets = createTokenBuckets({ redis: c.redis, prefix: c.prefix });
    const level = await buckets.adjust(`tpm:org:${org}:${FLASH}`, 1000, 1000 / 60, -600);
    expect(level).toBeGreaterThanOrEqual(800);
    expect((await c.scheduler.dispatch()).promoted).toEqual([]);
    await c.scheduler.wakeOrg(org);
    expect((await c.scheduler.dispatch()).promoted).toEqual([ids[2]]);
  });

  it('limits an org per model by the model\'s configured orgRpm unless its own plan says otherwise', async () => {
    const c = await setup({ modelLimits: (m) => (m === 'limited-model' ? { orgRpm: 1 } : {}) });
    const org = randomOrg();
    const ids = await c.add(org, 2, { model: 'limited-model' });
    expect((await c.scheduler.raw.dispatch()).ids).toEqual([ids[0]]);
    expect(await c.scheduler.why(ids[1])).toMatchObject({ reason: 'rate_limited', limit: `rpm:org:${org}:limited-model` });
    // The org's own flash rpm wins over the model's default for orgs.
    const other = randomOrg();
    await c.scheduler.setPlan(other, { rpm: { flash: 5 } });
    const more = await c.add(other, 3, { model: 'limited-model' });
    expect((await c.scheduler.raw.dispatch()).ids).toEqual(more);
  });

  it('sleeps a lane in the call that used its last token, and a release then says no dispatch is due', async () => {
    const c = await setup({ bufferTarget: 1000 });
    const org = randomOrg();
    // 2 a minute: the bucket holds 2 and the next token is 30 s away (+1 ms: wake times round up), far beyond this test.
    await c.scheduler.setPlan(org, { rpm: { flash: 2 } });
    const ids = await c.add(org, 5);
    const lane = `${org}|${FLASH}`;
    // A call bounded to the 2 jobs it can hand out never tries the lane a third time: the lane still sleeps
    // at once, on the bucket the second job emptied, so no later call reads it again before the token.
    const r = await c.scheduler.raw.dispatch(2);
    expect(r.ids).toEqual(ids.slice(0, 2));
    expect(await c.redis.zscore(c.scheduler.keys.named.lanes, lane)).toBeNull();
    const wakeAt = Number(await c.redis.zscore(c.scheduler.keys.named.sleep, lane));
    expect(wakeAt - r.nowMs).toBeGreaterThan(25_000);
    expect(wakeAt - r.nowMs).toBeLessThanOrEqual(30_001);
    expect(r.nextWakeMs).toBe(wakeAt);
    expect(await c.scheduler.why(ids[2])).toMatchObject({ reason: 'rate_limited', limit: `rpm:org:${org}:${FLASH}`, etaMs: wakeAt, position: 0 });
    // The two finish: nothing can be dispatched until the wake-up, so the worker's gate skips its dispatch.
    expect(await c.scheduler.release(ids.slice(0, 2))).toEqual({ freed: 2, due: false });
    // Another org's waiting job makes a dispatch worth it.
    const other = randomOrg();
    await c.add(other, 1);
    expect(await c.scheduler.release([ids[0]])).toEqual({ freed: 0, due: true });
  });

  it('arms one timer per wake time, whichever process computes it', async () => {
    const c = await setup();
    const org = randomOrg();
    await c.scheduler.setPlan(org, { rpm: { flash: 60 } });
    await c.add(org, 61);
    // Dispatch loops' calls: they take the wake-up they are handed.
    const first = await c.scheduler.raw.dispatch(undefined, undefined, true);
    expect(first.ids).toHaveLength(60);
    expect(first.nextWakeMs).toBeGreaterThan(first.nowMs);
    // Another process dispatching before that time learns nothing new: it arms no second timer.
    const second = await c.scheduler.raw.dispatch(undefined, undefined, true);
    expect(second.ids).toEqual([]);
    expect(second.nextWakeMs).toBeUndefined();
  });

  it('counts only what a worker can still fetch against the buffer: jobs fetched and not yet started leave room', async () => {
    const c = await setup({ bufferTarget: 5 });
    const org = randomOrg();
    const ids = await c.add(org, 20);
    expect((await c.scheduler.raw.dispatch()).ids).toEqual(ids.slice(0, 5));
    expect((await c.scheduler.raw.dispatch()).ids).toEqual([]);
    // A busy worker fetched all five (out of BullMQ's wait list) and has claimed none yet: the list is
    // refilled at once, so its next free slots find jobs instead of an empty list.
    for (const id of ids.slice(0, 5)) await c.redis.lrem(c.queue.toKey('wait'), 0, id);
    expect((await c.scheduler.raw.dispatch()).ids).toEqual(ids.slice(5, 10));
    // Their claims change nothing about the buffer: still full.
    for (const id of ids.slice(0, 5)) expect(await c.scheduler.claim(id)).toEqual({ held: true, cancelled: false });
    expect((await c.scheduler.raw.dispatch()).ids).toEqual([]);
    // Refilled once it lacks all but one of this small target (4 of 5), not for each job fetched: one dispatch
    // per batch, and the list never runs dry (the one left feeds a fetch made meanwhile).
    for (const id of ids.slice(5, 8)) await c.redis.lrem(c.queue.toKey('wait'), 0, id);
    expect((await c.scheduler.raw.dispatch()).ids).toEqual([]);
    await c.redis.lrem(c.queue.toKey('wait'), 0, ids[8]);
    expect((await c.scheduler.raw.dispatch()).ids).toEqual(ids.slice(10, 14));
  });

  it('one job after another (concurrency 1), a small ask is refilled once all but one of its jobs are taken: one dispatch per ask less one', async () => {
    // A cache miss at concurrency 1 asks for 6 to 10 jobs by time (40 ms at 150-250 jobs/s). Refilled at half of
    // it (until 2026-12-07), 3 of every 6 claims dispatched, each dispatch's ~32 fixed commands shared by 3 jobs.
    const c = await setup({ bufferRatio: 0.5, bufferTarget: undefined });
    const org = randomOrg();
    const ids = await c.add(org, 40);
    await c.scheduler.dispatch({ id: 'w1', concurrency: 1, ttlMs: 60_000, ask: 6 });
    expect((await c.queue.getWaiting()).map((j) => j.id!).sort()).toEqual(ids.slice(0, 6).sort());
    const order = ids.slice(0, 6);
    const dispatched: number[] = [];
    // Each claim's job was fetched (it left the list) and carries the last one's release, as the worker's gate sends it.
    for (let i = 0; i < 17; i++) {
      await c.redis.lrem(c.queue.toKey('wait'), 0, order[i]);
      const r = await c.scheduler.claim(order[i], undefined, { refill: true, ...(i > 0 ? { release: [order[i - 1]] } : {}) });
      expect(r).toMatchObject({ held: true, cancelled: false });
      const promoted = r.dispatched?.promoted ?? [];
      dispatched.push(promoted.length);
      order.push(...promoted);
    }
    // The 5th claim leaves one job of 6: 5 go; then every 5th claim again. The list never runs dry.
    expect(dispatched).toEqual([0, 0, 0, 0, 5, 0, 0, 0, 0, 5, 0, 0, 0, 0, 5, 0, 0]);
    expect(order.slice(0, 21)).toEqual(ids.slice(0, 21));
  });

  it('a claim with refill dispatches (and promotes) only when BullMQ\'s wait list is empty; a release can dispatch in its own call', async () => {
    const c = await setup({ bufferTarget: 2 });
    const org = randomOrg();
    const ids = await c.add(org, 8);
    const first = await c.scheduler.dispatch();
    expect(first.promoted).toEqual(ids.slice(0, 2));
    const waiting = () => c.queue.getWaiting().then((js) => js.map((j) => j.id).sort());
    // The list is full: a claim refills nothing.
    expect(await c.scheduler.claim(ids[0], undefined, { refill: true })).toEqual({ held: true, cancelled: false });
    // BullMQ took ids[0] out of wait (a worker's fetch); one job is still there: the releases refill it, not claims.
    await c.queue.remove(ids[0]);
    expect(await c.scheduler.claim(ids[1], undefined, { refill: true })).toEqual({ held: true, cancelled: false });
    // The last one taken: the list is empty, so the claim dispatches the next ones in its own call.
    await c.queue.remove(ids[1]);
    const refill = await c.scheduler.claim(ids[1], undefined, { refill: true });
    expect(refill).toMatchObject({ held: true, cancelled: false });
    expect(await refill.dispatched).toMatchObject({ promoted: [ids[2], ids[3]], more: false });
    expect(await waiting()).toEqual([ids[2], ids[3]].sort());
    // Without refill a claim never dispatches.
    await c.queue.remove(ids[2]);
    await c.queue.remove(ids[3]);
    expect(await c.scheduler.claim(ids[2])).toEqual({ held: true, cancelled: false });
    // A release asked to dispatch does it in the same call (two places: ids[3] left the wait list, though it
    // never started, as ids[2] did).
    const rel = await c.scheduler.release([ids[0], ids[1]], { dispatch: true });
    expect(rel).toMatchObject({ freed: 2, due: true, dispatched: { promoted: [ids[4], ids[5]] } });
    expect(await c.redis.zscore(c.queue.toKey('delayed'), ids[4])).toBeNull();
    expect(await waiting()).toEqual([ids[4], ids[5]].sort());
    // Asked to dispatch with nothing due, a release dispatches nothing.
    const quiet = await setup({ bufferTarget: 2 });
    const lone = await quiet.add(randomOrg(), 1);
    await quiet.scheduler.dispatch();
    expect(await quiet.scheduler.release(lone, { dispatch: true })).toEqual({ freed: 1, due: false });
  });

  it('a refill claim that finds no active lane and nothing due dispatches nothing and hands over the next wake time', async () => {
    const c = await setup({ bufferTarget: 5 });
    const org = randomOrg();
    // 2 a minute: two jobs go, the lane then sleeps ~30 s on the bucket.
    await c.scheduler.setPlan(org, { rpm: { flash: 2 } });
    const ids = await c.add(org, 3);
    const first = await c.scheduler.raw.dispatch();
    expect(first.ids).toEqual(ids.slice(0, 2));
    const wakeAt = Number(await c.redis.zscore(c.scheduler.keys.named.sleep, `${org}|${FLASH}`));
    expect(first.nextWakeMs).toBe(wakeAt);
    // The process that armed the wake-up is gone: the next caller to see the wake time arms it.
    await c.redis.del(c.scheduler.keys.named.wake);
    await c.queue.remove(ids[0]);
    await c.queue.remove(ids[1]);
    const claim = await c.scheduler.claim(ids[0], undefined, { refill: true });
    expect(claim).toMatchObject({ held: true, cancelled: false });
    expect(await claim.dispatched).toMatchObject({ promoted: [], nextWakeMs: wakeAt, more: false });
    // Armed once: the next refill claim learns nothing new, and the third job still waits in its lane.
    const again = await c.scheduler.claim(ids[1], undefined, { refill: true });
    expect((await again.dispatched)?.nextWakeMs).toBeUndefined();
    expect(await c.redis.zscore(c.scheduler.keys.named.sleep, `${org}|${FLASH}`)).toBe(String(wakeAt));
    expect(await c.scheduler.why(ids[2])).toMatchObject({ reason: 'rate_limited', etaMs: wakeAt });
  });

  it('a refill claim that finds no active lane while a wake-up is armed reads neither the timers, the sleepers, the leases nor BullMQ\'s prioritized set', async () => {
    const c = await setup({ bufferTarget: 5 });
    const org = randomOrg();
    // 2 a minute: two jobs go, the lane then sleeps ~30 s on the bucket, and the loop's dispatch arms its wake-up.
    await c.scheduler.setPlan(org, { rpm: { flash: 2 } });
    const ids = await c.add(org, 3);
    const first = await c.scheduler.raw.dispatch(undefined, undefined, true);
    expect(first.ids).toEqual(ids.slice(0, 2));
    const { timers, sleep, leases, wake } = c.scheduler.keys.named;
    const wakeAt = Number(await c.redis.zscore(sleep, `${org}|${FLASH}`));
    expect(Number(await c.redis.get(wake))).toBe(wakeAt);
    // A worker fetched both (BullMQ's wait list is empty): each claim asks for a refill.
    await c.queue.remove(ids[0]);
    await c.queue.remove(ids[1]);
    const seen: string[] = [];
    const monitor = await monitorRedis(redisUrl(), (line) => {
      if (line.includes(c.prefix)) seen.push(line);
    });
    const claim = await c.scheduler.claim(ids[0], undefined, { refill: true });
    const done = `${c.prefix}:monitor-done`;
    await c.redis.set(done, '1');
    await vi.waitFor(() => expect(seen.some((l) => l.includes(done))).toBe(true), POLL);
    monitor.close();
    expect(claim).toMatchObject({ held: true, cancelled: false });
    expect(claim.dispatched).toMatchObject({ promoted: [], more: false });
    expect(claim.dispatched?.nextWakeMs).toBeUndefined();
    // The wake-up armed covers them: two reads (the wait list; the active lanes and the wake key, in one EXISTS that
    // names the wake key twice), not six. BullMQ's prioritized set is not read either: with nothing to dispatch,
    // whether it holds jobs changes nothing.
    for (const key of [timers, sleep, leases, wake]) expect(seen.filter((l) => l.includes(`"ZRANGE" "${key}"`) || l.includes(`"GET" "${key}"`))).toEqual([]);
    const { lanes } = c.scheduler.keys.named;
    const reads = seen.filter((l) => l.includes(`"${lanes}"`) || l.includes(`"${wake}"`)).map((l) => l.slice(l.indexOf('"')));
    expect(reads).toEqual([`"EXISTS" "${lanes}" "${wake}" "${wake}"`]);
    expect(seen.filter((l) => l.includes(`"ZCARD" "${c.queue.toKey('prioritized')}"`))).toEqual([]);
    // Nothing moved: the lane sleeps until the wake-up armed, the third job waits in it.
    expect(await c.redis.zscore(sleep, `${org}|${FLASH}`)).toBe(String(wakeAt));
    expect(await c.scheduler.why(ids[2])).toMatchObject({ reason: 'rate_limited', etaMs: wakeAt });
  });

  it('a release asked not to sweep reads neither the timers, the sleepers nor the leases: only an active lane makes it dispatch', async () => {
    const c = await setup({ bufferTarget: 5 });
    const org = randomOrg();
    await c.scheduler.setPlan(org, { rpm: { flash: 2 } });
    const ids = await c.add(org, 4);
    expect((await c.scheduler.raw.dispatch(undefined, undefined, true)).ids).toEqual(ids.slice(0, 2));
    await c.queue.remove(ids[0]);
    await c.queue.remove(ids[1]);
    const { timers, sleep, leases } = c.scheduler.keys.named;
    const lane = `${org}|${FLASH}`;
    // The lane's wake-up is lost (its time passed, nobody dispatched): a sweep would find it due.
    await c.redis.zadd(sleep, String((await c.redisNow()) - 1000), lane);
    const all: string[] = [];
    const monitor = await monitorRedis(redisUrl(), (line) => all.push(line));
    expect(await c.scheduler.release([ids[0]], { dispatch: true, sweep: false })).toEqual({ freed: 1, due: false });
    const done = `${c.prefix}:monitor-done`;
    await c.redis.set(done, '1');
    await vi.waitFor(() => expect(all.some((l) => l.includes(done))).toBe(true), POLL);
    monitor.close();
    const seen = all.filter((l) => l.includes(c.prefix));
    for (const key of [timers, sleep, leases]) expect(seen.filter((l) => l.includes(`"ZRANGE" "${key}"`))).toEqual([]);
    // Nor Redis's clock: the lines Redis logs right after the script's EVALSHA (a script runs alone) are its commands.
    const at = all.findIndex((l) => l.includes(c.prefix) && l.includes('"release"'));
    const own: string[] = [];
    for (let i = at + 1; i < all.length && / lua\] /.test(all[i]); i++) own.push(/ lua\] "([A-Za-z]+)"/.exec(all[i])![1]);
    // The org's capped lanes and the race's existence in one EXISTS: no ZRANGE of the empty race.
    expect(own).toEqual(['HMGET', 'ZREM', 'EXISTS', 'HINCRBY', 'DEL']);
    const { capBlockedPrefix, lanes } = c.scheduler.keys.named;
    expect(all.filter((l) => l.includes(`"EXISTS" "${capBlockedPrefix}${org}" "${lanes}" "${lanes}"`))).toHaveLength(1);
    // Left for the next sweep: this process's next release once its last sweep is half a poll old, or its poll.
    expect(await c.redis.zscore(sleep, lane)).not.toBeNull();
    const swept = await c.scheduler.release([ids[1]], { dispatch: true });
    expect(swept).toMatchObject({ freed: 1, due: true });
    expect(swept.dispatched?.promoted).toEqual([]);
    expect(await c.redis.zscore(sleep, lane)).not.toBeNull();
    // An active lane still makes such a release dispatch.
    const other = randomOrg();
    const laned = await c.add(other, 1);
    const r = await c.scheduler.release(['gone'], { dispatch: true, sweep: false });
    expect(r).toMatchObject({ freed: 0, due: true });
    expect(r.dispatched?.promoted).toEqual(laned);
  });

  it('a claim carries the releases of jobs that finished before it: their slots are freed and due work dispatched in the same call', async () => {
    const c = await setup({ bufferTarget: 5 });
    const org = randomOrg();
    await c.scheduler.setPlan(org, { concurrency: 2 });
    const ids = await c.add(org, 4);
    // The cap holds the org to two slots: ids[0] and ids[1].
    expect((await c.scheduler.dispatch()).promoted).toEqual(ids.slice(0, 2));
    /** A worker's fetch: the job leaves BullMQ's wait list. */
    const fetch = (id: string) => c.redis.lrem(c.queue.toKey('wait'), 0, id);
    await fetch(ids[0]);
    await fetch(ids[1]);
    expect(await c.scheduler.claim(ids[0])).toEqual({ held: true, cancelled: false });
    // ids[0] finished; ids[1] starts and hands over ids[0]'s release: the freed slot goes to ids[2] at once.
    const next = await c.scheduler.claim(ids[1], undefined, { refill: true, release: [ids[0]] });
    expect(next).toMatchObject({ held: true, cancelled: false });
    expect(await next.dispatched).toMatchObject({ promoted: [ids[2]] });
    expect(await c.redis.zscore(c.queue.toKey('delayed'), ids[2])).toBeNull();
    expect((await c.scheduler.orgStats(org)).inFlight).toBe(2);
    // Released once: a second release of the same job frees nothing.
    expect(await c.scheduler.release([ids[0]])).toMatchObject({ freed: 0 });
    // A claim that is not held (its lease is gone) still releases what it carries, and dispatches when due.
    const lost = await c.scheduler.claim('no-such-job', undefined, { release: [ids[1]] });
    expect(lost).toMatchObject({ held: false, cancelled: false });
    expect(await lost.dispatched).toMatchObject({ promoted: [ids[3]] });
    // Nothing due: the carried release dispatches nothing.
    const quiet = await setup({ bufferTarget: 2 });
    const lone = await quiet.add(randomOrg(), 2);
    await quiet.scheduler.dispatch();
    expect(await quiet.scheduler.claim(lone[1], undefined, { release: [lone[0]] })).toEqual({ held: true, cancelled: false });
    expect((await quiet.scheduler.orgStats(orgOf(lone[0]))).inFlight).toBe(1);
  });

  it('one job after another (a worker of concurrency 1), claims carrying the last release dispatch in batches of 15', async () => {
    // What a worker of concurrency 1 running short jobs asks for (SMALL_WORKER_MAX_ASK).
    const c = await setup({ bufferTarget: 16 });
    const org = randomOrg();
    const ids = await c.add(org, 50);
    expect((await c.scheduler.dispatch()).promoted).toEqual(ids.slice(0, 16));
    // BullMQ hands the worker the next job (it leaves the wait list), whose claim carries the last one's release.
    const batches: string[][] = [];
    for (let i = 0; i < 30; i++) {
      await c.redis.lrem(c.queue.toKey('wait'), 0, ids[i]);
      const r = await c.scheduler.claim(ids[i], undefined, { refill: true, ...(i > 0 ? { release: [ids[i - 1]] } : {}) });
      expect(r).toMatchObject({ held: true, cancelled: false });
      const promoted = (await r.dispatched)?.promoted ?? [];
      if (promoted.length) batches.push(promoted);
    }
    // Refilled each time all but one of 16 are lacking (the claim that takes the next-to-last job): 15 jobs per
    // dispatch, in FIFO order, never a dispatch per job (8 until 2026-12-08: a dispatch's fixed part per 8 jobs).
    // (A target of 50 is refilled at 8 lacking, not at half: see 'refills a large buffer in batches of 8'.)
    expect(batches).toEqual([ids.slice(16, 31), ids.slice(31, 46)]);
    expect(await c.queue.getWaitingCount()).toBe(16);
    expect((await c.scheduler.orgStats(org)).inFlight).toBe(await c.queue.getWaitingCount() + 1);
    // Every release carried was done whole (most by the claim's early path, which skips the sweeps): the
    // finished jobs' dispatcher records are gone, the running one's kept.
    const record = (id: string) => c.redis.exists(`${fairJobPrefix(`${c.prefix}:fq`)}${id}`);
    expect(await Promise.all(ids.slice(0, 29).map(record))).toEqual(Array(29).fill(0));
    expect(await record(ids[29])).toBe(1);
  });

  it('refills a large buffer in batches of 8, not only once half of it is gone', async () => {
    const c = await setup({ bufferTarget: 50 });
    const org = randomOrg();
    const ids = await c.add(org, 60);
    expect((await c.scheduler.raw.dispatch()).ids).toEqual(ids.slice(0, 50));
    for (const id of ids.slice(0, 7)) await c.redis.lrem(c.queue.toKey('wait'), 0, id);
    expect((await c.scheduler.raw.dispatch()).ids).toEqual([]);
    await c.redis.lrem(c.queue.toKey('wait'), 0, ids[7]);
    expect((await c.scheduler.raw.dispatch()).ids).toEqual(ids.slice(50, 58));
  });

  it('a claim carrying a release reads BullMQ\'s prioritized set only when the wait list alone lacks a batch', async () => {
    const c = await setup({ bufferTarget: 16 });
    const org = randomOrg();
    const ids = await c.add(org, 40);
    expect((await c.scheduler.dispatch()).promoted).toEqual(ids.slice(0, 16));
    // Two of them in BullMQ's prioritized set instead (as a priority moves them): they count against the buffer as
    // the wait list's jobs do.
    const prio = c.queue.toKey('prioritized');
    for (const [k, id] of ids.slice(14, 16).entries()) {
      await c.redis.lrem(c.queue.toKey('wait'), 0, id);
      await c.redis.zadd(prio, k + 1, id);
    }
    /** One claim of a job BullMQ handed over (it leaves the wait list), carrying the last one's release, under MONITOR. */
    const claimSeen = async (i: number) => {
      await c.redis.lrem(c.queue.toKey('wait'), 0, ids[i]);
      await c.redis.zrem(prio, ids[i]);
      const seen: string[] = [];
      const monitor = await monitorRedis(redisUrl(), (line) => {
        if (line.includes(c.prefix)) seen.push(line);
      });
      const r = await c.scheduler.claim(ids[i], undefined, { refill: true, release: [i > 0 ? ids[i - 1] : 'gone'] });
      const done = `${c.prefix}:monitor-done`;
      await c.redis.set(done, String(i));
      await vi.waitFor(() => expect(seen.some((l) => l.includes(done))).toBe(true), POLL);
      monitor.close();
      expect(r).toMatchObject({ held: true, cancelled: false });
      return { promoted: r.dispatched?.promoted ?? [], prioReads: seen.filter((l) => l.includes(`"ZCARD" "${prio}"`)).length };
    };
    // 14 waiting; each claim's job leaves the list: 13, 12, ..., 2. The list alone lacks no batch (all but one of 16)
    // until it holds 1, so the prioritized set is not read.
    for (let i = 0; i < 12; i++) expect(await claimSeen(i)).toEqual({ promoted: [], prioReads: 0 });
    // 1 in the list: with the prioritized set's 2 the buffer lacks 13, no batch (read now: it decides).
    expect(await claimSeen(12)).toEqual({ promoted: [], prioReads: 1 });
    // 0 + 2 queued: 14 lacking, still no batch; 0 + 1 (a prioritized job fetched): 15 lacking, a batch of 15 goes.
    expect(await claimSeen(13)).toEqual({ promoted: [], prioReads: 1 });
    expect(await claimSeen(14)).toEqual({ promoted: ids.slice(16, 31), prioReads: 1 });
  });

  it('a claim carrying a release that dispatches reads the race once: the read that finds a lane active is its first pick', async () => {
    const c = await setup({ bufferTarget: 16 });
    const { lanes } = c.scheduler.keys.named;
    const org = randomOrg();
    const ids = await c.add(org, 40);
    expect((await c.scheduler.dispatch()).promoted).toEqual(ids.slice(0, 16));
    // A worker fetched 15 of them (they left the wait list) and ran 14: the 15th's claim carries the 14th's release.
    for (const id of ids.slice(0, 15)) await c.redis.lrem(c.queue.toKey('wait'), 0, id);
    const seen: string[] = [];
    const monitor = await monitorRedis(redisUrl(), (line) => {
      if (line.includes(c.prefix)) seen.push(line);
    });
    const r = await c.scheduler.claim(ids[14], undefined, { refill: true, release: [ids[13]] });
    const done = `${c.prefix}:monitor-done`;
    await c.redis.set(done, '1');
    await vi.waitFor(() => expect(seen.some((l) => l.includes(done))).toBe(true), POLL);
    monitor.close();
    expect(r).toMatchObject({ held: true, cancelled: false });
    // 1 left of 16: a batch of 15 goes, the lane's next jobs in order, in one run of the one lane.
    expect(r.dispatched?.promoted).toEqual(ids.slice(16, 31));
    const count = (cmd: string) => seen.filter((l) => l.includes(`"${cmd}" "${lanes}"`)).length;
    // One read of the race: the one that tells a lane is active hands the dispatch its first pick (a ZCARD, then a
    // ZRANGE, before).
    expect({ zcard: count('ZCARD'), zrange: count('ZRANGE') }).toEqual({ zcard: 0, zrange: 1 });
  });

  it('a dispatch reads the timers and the sleepers once each: their first scores settle both the sweeps and the next wake-up', async () => {
    const c = await setup({ bufferTarget: 50 });
    const { timers, sleep, wake } = c.scheduler.keys.named;
    // A lane asleep ~30 s on its org's rate (2 a minute: two jobs go), and jobs on timers 60 s out.
    const slow = randomOrg();
    await c.scheduler.setPlan(slow, { rpm: { flash: 2 } });
    const slowIds = await c.add(slow, 3);
    expect((await c.scheduler.raw.dispatch(undefined, undefined, true)).ids).toEqual(slowIds.slice(0, 2));
    const sleepsUntil = Number(await c.redis.zscore(sleep, `${slow}|${FLASH}`));
    const later = randomOrg();
    const timed = [`${later}-t1`, `${later}-t2`];
    await c.queue.addBulk(timed.map((id) => ({ name: 'j', data: { org: later }, opts: parkedJobOptions(id) })));
    await c.scheduler.enqueue(timed.map((jobId) => ({ jobId, orgId: later, model: FLASH, estTokens: 0, delayMs: 60_000 })), { dispatch: false });
    const timerAt = Number(await c.redis.zscore(timers, timed[1]));
    expect(timerAt).toBeGreaterThan(sleepsUntil);
    /** One dispatch taking the wake-up (the wake key dropped first: handed again), under MONITOR: its reads of the two sets. */
    const dispatchSeen = async () => {
      await c.redis.del(wake);
      const seen: string[] = [];
      const monitor = await monitorRedis(redisUrl(), (line) => {
        if (line.includes(c.prefix)) seen.push(line);
      });
      const r = await c.scheduler.raw.dispatch(undefined, undefined, true);
      const done = `${c.prefix}:monitor-done`;
      await c.redis.set(done, String(Math.random()));
      await vi.waitFor(() => expect(seen.some((l) => l.includes(done))).toBe(true), POLL);
      monitor.close();
      const reads = (key: string) => seen.filter((l) => l.includes(`"ZRANGE" "${key}"`) || l.includes(`"ZRANGEBYSCORE" "${key}"`)).length;
      return { ids: r.ids, nextWakeMs: r.nextWakeMs, timerReads: reads(timers), sleepReads: reads(sleep) };
    };
    // An active lane and nothing due: each set read once (its first score), not swept and then read again.
    const busy = await c.add(randomOrg(), 3);
    expect(await dispatchSeen()).toEqual({ ids: busy, nextWakeMs: sleepsUntil, timerReads: 1, sleepReads: 1 });
    // A timer due (its time passed with nobody dispatching): swept into its lane and dispatched; the next wake-up is read
    // again after the sweep moved it (the sleeper's, not the moved timer's time).
    await c.redis.zadd(timers, String((await c.redisNow()) - 1000), timed[0]);
    const busy2 = await c.add(randomOrg(), 1);
    const swept = await dispatchSeen();
    expect(swept.ids.sort()).toEqual([timed[0], ...busy2].sort());
    expect(swept).toMatchObject({ nextWakeMs: sleepsUntil, timerReads: 3, sleepReads: 1 });
  });

  it('enqueue writes a model\'s limits only when they differ (the last writer\'s change wins) and indexes the job in the same call', async () => {
    const c = await setup({ modelLimits: () => ({ rpm: 100, tpm: 1000, orgRpm: 5 }) });
    const limitsKey = c.scheduler.keys.named.modelLimits;
    // WATCH sees any write to the hash, even one that stores the same value: EXEC is refused then.
    const watcher = c.redis.duplicate();
    cleanups.push(() => watcher.quit());
    const writesLimits = async (fn: () => Promise<unknown>) => {
      await watcher.watch(limitsKey);
      await fn();
      return (await watcher.multi().ping().exec()) === null;
    };
    const org = randomOrg();
    const lane = async (s: FairScheduler, id: string, at?: number) => {
      await c.queue.add('j', { org }, parkedJobOptions(id));
      await s.enqueue([{ jobId: id, orgId: org, model: FLASH, estTokens: 0, ...(at !== undefined ? { indexAt: at } : {}) }], { dispatch: false });
    };
    expect(await writesLimits(() => lane(c.scheduler, `${org}-1`, 1111))).toBe(true);
    expect(await c.redis.hgetall(limitsKey)).toEqual({ [`rpm:${FLASH}`]: '100', [`tpm:${FLASH}`]: '1000', [`orgrpm:${FLASH}`]: '5' });
    expect(await writesLimits(() => lane(c.scheduler, `${org}-2`))).toBe(false);
    // Another producer with other limits (no tpm known, no orgRpm): its change is written, the rest kept.
    const other = testScheduler(c.redis, c.queue, c.prefix, { modelLimits: () => ({ rpm: 200 }) });
    expect(await writesLimits(() => lane(other, `${org}-3`))).toBe(true);
    expect(await c.redis.hgetall(limitsKey)).toEqual({ [`rpm:${FLASH}`]: '200', [`tpm:${FLASH}`]: '1000' });
    expect(await writesLimits(() => lane(other, `${org}-4`))).toBe(false);
    // The org's job index: only the entry that asked for it, with its score.
    expect(await c.redis.zrange(orgJobsKey(c.prefix, org), 0, -1, 'WITHSCORES')).toEqual([`${org}-1`, '1111']);
  });

  it('claim reads the job\'s cancel marker in the same call, and writes no stage for a cancelled job', async () => {
    const c = await setup();
    const org = randomOrg();
    const [a, b] = await c.add(org, 2);
    expect((await c.scheduler.raw.dispatch()).ids).toEqual([a, b]);
    await c.redis.set(cancelRequestedKey(c.prefix, b), '1');
    expect(await c.scheduler.claim(a, '"calling"')).toEqual({ held: true, cancelled: false });
    expect(await c.scheduler.claim(b, '"calling"')).toEqual({ held: true, cancelled: true });
    expect(await c.redis.hget(c.queue.toKey(a), 'progress')).toBe('"calling"');
    expect(await c.redis.hget(c.queue.toKey(b), 'progress')).toBeNull();
    // Not holding a slot (never dispatched), cancelled or not: both answers still come back.
    await c.redis.set(cancelRequestedKey(c.prefix, 'unknown'), '1');
    expect(await c.scheduler.claim('unknown')).toEqual({ held: false, cancelled: true });
  });

  it('a claim renews its lease in the command that finds it, never shortens it, and holds when the renewal changes nothing', async () => {
    const c = await setup({ leaseMs: 60_000 });
    const org = randomOrg();
    const [a, b] = await c.add(org, 2);
    expect((await c.scheduler.raw.dispatch()).ids).toEqual([a, b]);
    const { leases } = c.scheduler.keys.named;
    // a: an old lease, renewed to now + leaseMs. b: one already longer, which the renewal leaves as it is (the
    // command that renews then answers 0, as it does for a job dispatched in the claim's own millisecond): held.
    await c.redis.zadd(leases, 1, a);
    const far = Date.now() + 3_600_000;
    await c.redis.zadd(leases, far, b);
    const before = await c.redisNow();
    expect(await c.scheduler.claim(a)).toEqual({ held: true, cancelled: false });
    expect(Number(await c.redis.zscore(leases, a))).toBeGreaterThanOrEqual(before + 60_000);
    expect(await c.scheduler.claim(b)).toEqual({ held: true, cancelled: false });
    expect(Number(await c.redis.zscore(leases, b))).toBe(far);
    // No lease, no slot: the claim creates none.
    expect(await c.scheduler.claim('never-dispatched')).toEqual({ held: false, cancelled: false });
    expect(await c.redis.zscore(leases, 'never-dispatched')).toBeNull();
  });

  it('a held claim runs the job\'s result-cache lookup in the same call; singleFlight then starts from its reply', async () => {
    const c = await setup();
    const org = randomOrg();
    const cacheRedis = new Redis(redisUrl());
    cleanups.push(() => cacheRedis.quit());
    const cache = createResultCache<AgentResult>({ redis: cacheRedis, prefix: `${c.prefix}:agentq`, l1Max: 10, l1TtlMs: 60_000, l2TtlS: 60 });
    let sent = 0;
    const send = cacheRedis.sendCommand.bind(cacheRedis);
    cacheRedis.sendCommand = ((...a: Parameters<Redis['sendCommand']>) => (sent++, send(...a))) as Redis['sendCommand'];
    const parts = (n: number): CacheKeyParts => ({ orgId: org, agent: 'risk', action: 'analyze', model: FLASH, promptVersion: 1, input: { n } });
    const lockOf = (p: CacheKeyParts) => guardKeys.resultLock(`${c.prefix}:agentq`, resultCacheHash(p));
    const [miss, stored, cancelled] = await c.add(org, 3);
    expect((await c.scheduler.raw.dispatch()).ids).toEqual([miss, stored, cancelled]);

    // A miss: the claim takes the single-flight lock under the prepared token, and the value is computed
    // and stored without any lookup of its own (the store is the cache's only command).
    const m = cache.prepare(parts(1), miss)!;
    const claimed = await c.scheduler.claim(miss, undefined, { lookup: m });
    expect(claimed).toMatchObject({ held: true, cancelled: false, lookupReply: ['0.0.0', 0, 2] });
    expect(await c.redis.get(lockOf(parts(1)))).toMatch(new RegExp(`^${miss}#`));
    m.deliver(claimed.lookupReply);
    sent = 0;
    const computed = await cache.singleFlight(parts(1), async () => okResult('fresh'), { owner: miss, prefetched: m });
    expect(computed).toMatchObject({ from: 'call', value: { data: 'fresh' } });
    expect(sent).toBe(1);
    expect(await c.redis.exists(lockOf(parts(1)))).toBe(0);
    await m.discard();

    // An entry: it comes back with the claim, and singleFlight answers from it with no command at all.
    await cache.set(parts(2), okResult('cached'));
    const fresh = createResultCache<AgentResult>({ redis: cacheRedis, prefix: `${c.prefix}:agentq`, l1Max: 10, l1TtlMs: 60_000, l2TtlS: 60 });
    const h = fresh.prepare(parts(2), stored)!;
    const hit = await c.scheduler.claim(stored, undefined, { lookup: h });
    expect(hit.lookupReply).toEqual(['0.0.0', 2, 0, JSON.stringify(okResult('cached'))]);
    h.deliver(hit.lookupReply);
    sent = 0;
    expect(await fresh.singleFlight(parts(2), async () => okResult('not called'), { owner: stored, prefetched: h })).toMatchObject({ from: 'l2', value: { data: 'cached' } });
    expect(sent).toBe(0);

    // A job that does not run takes no lock: cancelled, or without a slot.
    await c.redis.set(cancelRequestedKey(c.prefix, cancelled), '1');
    const x = cache.prepare(parts(3), cancelled)!;
    expect(await c.scheduler.claim(cancelled, undefined, { lookup: x })).toEqual({ held: true, cancelled: true });
    expect(await c.scheduler.claim('not-dispatched', undefined, { lookup: x })).toEqual({ held: false, cancelled: false });
    expect(await c.redis.exists(lockOf(parts(3)))).toBe(0);

    // A lock the claim took for a value never computed is freed by discard.
    const [dropped] = await c.add(org, 1);
    await c.scheduler.raw.dispatch();
    const d = cache.prepare(parts(4), dropped)!;
    d.deliver((await c.scheduler.claim(dropped, undefined, { lookup: d })).lookupReply);
    expect(await c.redis.exists(lockOf(parts(4)))).toBe(1);
    await d.discard();
    expect(await c.redis.exists(lockOf(parts(4)))).toBe(0);
  });

  it('a held claim appends the usage row of an attempt answered before it; a cancelled job or one without a slot appends nothing', async () => {
    const c = await setup();
    const org = randomOrg();
    const stream = `${c.prefix}:agentq:usage`;
    const row = (id: string) => ({ key: stream, field: 'r', entry: JSON.stringify({ jobId: id }) });
    const [runs, cancelled] = await c.add(org, 2);
    expect((await c.scheduler.raw.dispatch()).ids).toEqual([runs, cancelled]);
    await c.redis.set(cancelRequestedKey(c.prefix, cancelled), '1');
    expect(await c.scheduler.claim(runs, undefined, { append: row(runs) })).toEqual({ held: true, cancelled: false, appended: true });
    expect(await c.scheduler.claim(cancelled, undefined, { append: row(cancelled) })).toEqual({ held: true, cancelled: true });
    expect(await c.scheduler.claim('not-dispatched', undefined, { append: row('not-dispatched') })).toEqual({ held: false, cancelled: false });
    const entries = await c.redis.xrange(stream, '-', '+');
    expect(entries.map(([, fields]) => fields)).toEqual([['r', JSON.stringify({ jobId: runs })]]);
    // A claim carries one or the other: a lookup (4 keys) or a row (1 key).
    const cache = createResultCache<AgentResult>({ redis: c.redis, prefix: `${c.prefix}:agentq`, l1Max: 10, l1TtlMs: 60_000, l2TtlS: 60 });
    const lookup = cache.prepare({ orgId: org, agent: 'risk', action: 'analyze', model: FLASH, promptVersion: 1, input: { n: 1 } }, runs)!;
    await expect(c.scheduler.claim(runs, undefined, { lookup, append: row(runs) })).rejects.toThrow(/not both/);
  });

  it('applies a plan change at the next dispatch', async () => {
    const c = await setup();
    const org = randomOrg();
    await c.scheduler.setPlan(org, { concurrency: 1 });
    const ids = await c.add(org, 10);
    expect((await c.scheduler.dispatch()).promoted).toHaveLength(1);
    expect((await c.scheduler.dispatch()).promoted).toHaveLength(0);
    expect((await c.scheduler.why(ids[1]))?.reason).toBe('org_concurrency');
    expect(await c.scheduler.getPlan(org)).toEqual({ concurrency: 1 });
    await c.scheduler.setPlan(org, { concurrency: 5 });
    expect((await c.scheduler.dispatch()).promoted).toEqual(ids.slice(1, 5));
    expect((await c.scheduler.orgStats(org)).inFlight).toBe(5);
    expect((await c.scheduler.orgStats(org)).plan.concurrency).toBe(5);
  });
});
