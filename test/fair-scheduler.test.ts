import { Queue, Worker, type Job } from 'bullmq';
import { Redis } from 'ioredis';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { createDispatchLoop, type DispatchLoop } from '../src/shared/fair/dispatch-loop.js';
import { createFairScheduler, type FairScheduler, type FairSchedulerOptions } from '../src/shared/fair/fair-scheduler.js';
import { isParked, parkedJobOptions, PARK_SCORE_MIN } from '../src/shared/fair/park.js';
import { randomOrg, randomPrefix, redisUrl } from './helpers/env.js';

const FLASH = 'gemini-2.5-flash';

interface Ctx {
  prefix: string;
  redis: Redis;
  queue: Queue;
  scheduler: FairScheduler;
  /** Adds parked BullMQ jobs and lanes them without dispatching; returns their ids in order. */
  add(org: string, n: number, o?: { model?: string; priority?: number; est?: number; tag?: string }): Promise<string[]>;
  worker(processor: (job: Job) => Promise<unknown>, concurrency?: number): Worker;
  loop(): DispatchLoop;
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
  const scheduler = createFairScheduler({
    redis,
    queue,
    keyPrefix: `${prefix}:fq`,
    bucketPrefix: prefix,
    defaults: { weight: 1, concurrency: 0, rpm: { pro: 0, flash: 0 }, tpm: 0 },
    modelLimits: () => ({}),
    leaseMs: 60_000,
    bufferTarget: 100_000,
    ...over,
  });
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
    loop() {
      const l = createDispatchLoop({ scheduler, safetyPollMs: 5_000 });
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

describe('fair scheduler', () => {
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
