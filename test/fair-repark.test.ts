import { Queue, Worker, type Job, type MinimalJob } from 'bullmq';
import { Redis } from 'ioredis';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { DispatchLoop } from '../src/shared/fair/dispatch-loop.js';
import { defaultRegistry } from '../src/shared/agents/registry.js';
import { createAgentQueue } from '../src/shared/queue/agent-queue.js';
import { createJobProducer } from '../src/shared/queue/job-producer.js';
import { parkActiveJob, parkedJobOptions, PARK_AT_MS } from '../src/shared/fair/park.js';
import { createFairGate } from '../src/workers/fair-gate.js';
import type { Logger } from '../src/shared/core/logger.js';
import { randomOrg, randomPrefix, redisUrl } from './helpers/env.js';
import { redisNow, testScheduler } from './helpers/fair.js';
import { POLL, waitsTimeout } from './helpers/wait.js';

/**
 * A repark comes a round trip (or more) after the park it follows: a retry's (BullMQ's moveToFailed parks the job,
 * the gate reparks it on the 'failed' event) and a deferral's (park, then repark). These tests put the other
 * processes' calls in that window, in the order a race could, with the fetches made by hand (a worker that does
 * not run its processor) and the lease's expiry written, so each interleaving happens every time.
 */

const FLASH = 'gemini-2.5-flash';
const logger = { warn: () => {}, debug: () => {} } as unknown as Logger;

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

let seq = 0;
async function setup() {
  const prefix = randomPrefix();
  const redis = new Redis(redisUrl(), { maxRetriesPerRequest: null });
  const queue = new Queue('fair', { connection: redis, prefix });
  cleanups.push(() => redis.quit());
  cleanups.push(() => queue.close());
  const scheduler = testScheduler(redis, queue, prefix);
  const org = randomOrg();
  await scheduler.setPlan(org, { concurrency: 1 });
  // The retry's backoff, as the worker's strategy asks it of the gate (agent-worker.ts): BullMQ parks the job.
  let retryDelay = (_job: MinimalJob): number => PARK_AT_MS - Date.now();
  const conn = new Redis(redisUrl(), { maxRetriesPerRequest: null });
  const worker = new Worker('fair', null, {
    connection: conn,
    prefix,
    autorun: false,
    settings: { backoffStrategy: (_n: number, _t?: string, _e?: Error, job?: MinimalJob) => retryDelay(job!) },
  });
  cleanups.push(async () => {
    await worker.close();
    await conn.quit();
  });
  const fq = scheduler.keys;
  return {
    redis,
    queue,
    scheduler,
    org,
    worker,
    setRetryDelay: (f: (job: MinimalJob) => number) => void (retryDelay = f),
    /** Adds `n` parked jobs of the org (3 attempts) and lanes them, dispatching unless told not to. */
    async add(n: number, dispatch = true, estTokens = 0) {
      const ids = Array.from({ length: n }, () => `${org}-${seq++}`);
      await queue.addBulk(ids.map((id) => ({ name: 'j', data: { org }, opts: { ...parkedJobOptions(id), attempts: 3, backoff: { type: 'fair' } } })));
      const r = await scheduler.enqueue(ids.map((jobId) => ({ jobId, orgId: org, model: FLASH, estTokens })), { dispatch });
      return { ids, promoted: r.promoted };
    },
    /** A worker's fetch of the next job in BullMQ's wait list and its claim (which must hold the slot). */
    async fetchAndClaim(token: string): Promise<Job> {
      const job = await worker.getNextJob(token, { block: false });
      expect(job).toBeDefined();
      expect((await scheduler.claim(job!.id!)).held).toBe(true);
      return job!;
    },
    /** The job ran longer than its lease and no dispatch has swept since: its lease has run out. */
    async expireLease(id: string) {
      await redis.zadd(fq.leases, (await redisNow(redis)) - 1, id);
    },
    leases: () => redis.zrange(fq.leases, 0, -1),
    record: (id: string) => redis.hgetall(`${fq.named.jobPrefix}${id}`),
    inFlight: async () => (await scheduler.orgStats(org)).inFlight,
  };
}

/** A dispatch loop for a gate: only its kicks are counted. */
function stubLoop(): DispatchLoop & { kicks: number } {
  const loop = {
    kicks: 0,
    kick: async () => void loop.kicks++,
    absorb: () => {},
    takeRegistration: () => undefined,
    registrationLost: () => {},
    askMoved: () => {},
    swept: () => {},
    sweepDue: () => true,
    close: async () => {},
  };
  return loop as unknown as DispatchLoop & { kicks: number };
}

describe('fair repark: only the attempt\'s own parked job', () => {
  it('a retry parked after its lease ran out keeps its slot until its repark, which another process\'s dispatch does not beat: it waits out its backoff', async () => {
    const c = await setup();
    const loop = stubLoop();
    const gate = createFairGate({ scheduler: c.scheduler, loop, logger, entryOf: (job) => ({ jobId: job.id!, orgId: c.org, model: FLASH, estTokens: 0 }) });
    const backoffMs = 400;
    c.setRetryDelay((job) => gate.retryDelay(job, backoffMs));
    const { ids: [j], promoted } = await c.add(1);
    expect(promoted).toEqual([j]);
    const job = await c.fetchAndClaim('t1');
    await c.expireLease(j);
    // The attempt fails with a retry: BullMQ parks it (the gate's backoff strategy)...
    await job.moveToFailed(new Error('retryable'), 't1');
    expect(await c.queue.getJobState(j)).toBe('delayed');
    // ...and before the 'failed' event's repark lands, any other process dispatches (a release, a safety poll).
    expect((await c.scheduler.dispatch()).promoted).toEqual([]);
    expect(await c.leases()).toEqual([j]);
    // The repark from the 'failed' event.
    const reparkedAt = await redisNow(c.redis);
    gate.finished(job);
    await vi.waitFor(() => expect(loop.kicks).toBe(1), POLL);
    expect(await c.leases()).toEqual([]);
    expect(await c.scheduler.why(j)).toMatchObject({ reason: 'retry_backoff' });
    // Dispatched only once its backoff is over.
    let sentAt = 0;
    await vi.waitFor(async () => {
      const now = await redisNow(c.redis);
      if ((await c.scheduler.dispatch()).promoted.includes(j)) sentAt = now;
      expect(sentAt).toBeGreaterThan(0);
    }, POLL);
    expect(sentAt).toBeGreaterThanOrEqual(reparkedAt + backoffMs - 5);
    await gate.close();
  }, waitsTimeout(POLL.timeout, POLL.timeout));

  it('a retry\'s repark that comes after the lease sweep sent the job again frees no slot and moves nothing: the org stays at its cap, and the job leaves no lease when it completes', async () => {
    const c = await setup();
    const { ids: [j] } = await c.add(1);
    const first = await c.fetchAndClaim('t1');
    await c.expireLease(j);
    await first.moveToFailed(new Error('retryable'), 't1');
    // The repark does not come (its worker is stalled): the first sweep gives it a lease more, the next one takes the
    // worker for dead and sends the job again, at the head of its lane.
    expect((await c.scheduler.dispatch()).promoted).toEqual([]);
    await c.expireLease(j);
    expect((await c.scheduler.dispatch()).promoted).toEqual([j]);
    const second = await c.fetchAndClaim('t2');
    expect(second.attemptsStarted).toBe(first.attemptsStarted + 1);
    // The first attempt's repark arrives at last.
    expect(await c.scheduler.repark(j, 2_000, 'retry_backoff', first.attemptsStarted)).toBe(false);
    expect(await c.leases()).toEqual([j]);
    expect(await c.inFlight()).toBe(1);
    expect(await c.record(j)).toMatchObject({ st: 'lease' });
    // Org cap 1, its one job running: the next one waits.
    const { ids: [k], promoted } = await c.add(1);
    expect(promoted).toEqual([]);
    expect(await c.scheduler.why(k)).toMatchObject({ reason: 'org_concurrency' });
    // The second attempt completes; its release frees the slot and sends the next job. No lease stays behind.
    await second.moveToCompleted('ok', 't2', false);
    const rel = await c.scheduler.release([j], { dispatch: true });
    expect(rel.freed).toBe(1);
    expect(rel.dispatched?.promoted).toEqual([k]);
    expect(await c.leases()).toEqual([k]);
    expect(await c.record(j)).toEqual({});
    expect((await c.scheduler.dispatch()).promoted).toEqual([]);
    expect(await c.leases()).toEqual([k]);
  });

  it('a later attempt parked again is not an earlier attempt\'s to move: only its own repark sets its backoff', async () => {
    const c = await setup();
    const { ids: [j] } = await c.add(1);
    const first = await c.fetchAndClaim('t1');
    await c.expireLease(j);
    await first.moveToFailed(new Error('retryable'), 't1');
    await c.scheduler.dispatch();
    await c.expireLease(j);
    expect((await c.scheduler.dispatch()).promoted).toEqual([j]);
    const second = await c.fetchAndClaim('t2');
    await second.moveToFailed(new Error('retryable again'), 't2');
    const before = await redisNow(c.redis);
    // The second attempt's repark, then the first's, late.
    expect(await c.scheduler.repark(j, 60_000, 'retry_backoff', second.attemptsStarted)).toBe(true);
    const after = await redisNow(c.redis);
    expect(await c.scheduler.repark(j, 1_000, 'retry_backoff', first.attemptsStarted)).toBe(false);
    const at = Number(await c.redis.zscore(c.scheduler.keys.named.timers, j));
    expect(at).toBeGreaterThanOrEqual(before + 60_000);
    expect(at).toBeLessThanOrEqual(after + 60_000);
    expect(await c.leases()).toEqual([]);
  });

  it('a repark naming no attempt (the batch tier\'s wake) moves only a waiting job: never a running one, nor one its attempt parked before its own repark', async () => {
    const c = await setup();
    const { ids: [j] } = await c.add(1);
    const job = await c.fetchAndClaim('t1');
    // Running: the collector read 'delayed' a moment before the job was dispatched and fetched.
    expect(await c.scheduler.repark(j, 0, 'batch')).toBe(false);
    expect(await c.leases()).toEqual([j]);
    expect(await c.record(j)).toMatchObject({ st: 'lease' });
    expect(await c.redis.zcard(`${c.scheduler.keys.named.lanePrefix}${c.org}|${FLASH}`)).toBe(0);
    const { ids: [k], promoted } = await c.add(1);
    expect(promoted).toEqual([]);
    // The attempt defers for the batch tier: parked, and its repark not yet there.
    await parkActiveJob(job, 't1');
    expect(await c.scheduler.repark(j, 0, 'batch')).toBe(false);
    expect(await c.leases()).toEqual([j]);
    // Its own repark; then the wake moves the waiting job.
    expect(await c.scheduler.repark(j, 600_000, 'waiting_for_batch', job.attemptsStarted)).toBe(true);
    expect(await c.leases()).toEqual([]);
    expect((await c.scheduler.dispatch()).promoted).toEqual([k]);
    const kJob = await c.fetchAndClaim('t2');
    expect(kJob.id).toBe(k);
    expect(await c.scheduler.repark(j, 0, 'batch')).toBe(true);
    expect(await c.record(j)).toMatchObject({ st: 'lane' });
    expect((await c.scheduler.dispatch()).promoted).toEqual([]);
    expect(await c.scheduler.why(j)).toMatchObject({ reason: 'org_concurrency' });
  });

  it('a laned job that finished meanwhile (run outside its lane) is dropped by the dispatch that reaches it, never given a slot', async () => {
    const c = await setup();
    const { ids: [j, k] } = await c.add(2, false);
    // Promoted by hand and run by a worker that does not ask the dispatcher: it completes while still in its lane.
    await (await c.queue.getJob(j))!.promote();
    const job = await c.worker.getNextJob('t1', { block: false });
    expect(job?.id).toBe(j);
    await job!.moveToCompleted('ok', 't1', false);
    expect((await c.scheduler.dispatch()).promoted).toEqual([k]);
    expect(await c.leases()).toEqual([k]);
    expect(await c.inFlight()).toBe(1);
    expect(await c.record(j)).toEqual({});
  });
});

describe('fair cancel between a park and its repark', () => {
  /** The org's RPM and TPM buckets for FLASH, as the dispatch charged them (tokens and refill time). */
  async function buckets(c: Awaited<ReturnType<typeof setup>>) {
    const n = c.scheduler.keys.named;
    return Promise.all([`${n.tbRpmOrgPrefix}${c.org}:${FLASH}`, `${n.tbTpmOrgPrefix}${c.org}:${FLASH}`].map((k) => c.redis.hmget(k, 'tokens', 'ts')));
  }

  // The API's cancel (and the board's remove) asks the dispatcher first. A job its attempt has parked (a deferral,
  // or a retry BullMQ parked) still holds its lease, unlocked, but sits in BullMQ's delayed set: it is not a job
  // no worker fetched, so its dispatch's charge is not given back on top of the deferral's own refund (or for a
  // call that was made, a retry's), and its slot is left to the attempt's repark.
  it.each([
    ['a deferral (the gate parks, then reparks)', 'defer'],
    ['a retry (BullMQ parks it; the failed event reparks)', 'retry'],
  ] as const)('a cancel that lands between %s gives back neither the charge nor the slot; the repark frees the slot once', async (_name, how) => {
    const c = await setup();
    await c.scheduler.setPlan(c.org, { concurrency: 1, rpm: { flash: 10 }, tpm: 1000 });
    const { ids: [j], promoted } = await c.add(1, true, 300);
    expect(promoted).toEqual([j]);
    const job = await c.fetchAndClaim('t1');
    const charged = await buckets(c);
    expect(Number(charged[1][0])).toBeLessThan(701);
    if (how === 'defer') await parkActiveJob(job, 't1');
    else await job.moveToFailed(new Error('retryable'), 't1');
    expect(await c.queue.getJobState(j)).toBe('delayed');
    expect(await c.redis.exists(`${c.queue.toKey(j)}:lock`)).toBe(0);
    expect(await c.record(j)).toMatchObject({ st: 'lease' });
    // The cancel lands in the window.
    expect(await c.scheduler.cancel(j)).toBe(false);
    expect(await buckets(c)).toEqual(charged);
    expect(await c.inFlight()).toBe(1);
    expect(await c.leases()).toEqual([j]);
    // The attempt's own repark: the slot goes back, once; the charge is still the dispatch's.
    expect(await c.scheduler.repark(j, 600_000, how === 'defer' ? 'quota' : 'retry_backoff', job.attemptsStarted)).toBe(true);
    expect(await c.inFlight()).toBe(0);
    expect(await c.leases()).toEqual([]);
    expect(await buckets(c)).toEqual(charged);
    expect((await c.scheduler.release([j])).freed).toBe(0);
  });
});

describe('fair repark, model block and a job\'s delay: counted on Redis\'s clock, not the caller\'s', () => {
  it('a worker whose clock is 60 s behind Redis\'s still parks a retry for its whole backoff, and a deferral and its model block for their whole delay', async () => {
    const c = await setup();
    const loop = stubLoop();
    const gate = createFairGate({ scheduler: c.scheduler, loop, logger, entryOf: (job) => ({ jobId: job.id!, orgId: c.org, model: FLASH, estTokens: 0 }) });
    const backoffMs = 2_000;
    c.setRetryDelay((job) => gate.retryDelay(job, backoffMs));
    const realNow = Date.now.bind(Date);
    /** Runs `f` with this process's clock 60 s behind (Redis's is the test's real one). */
    const skewed = async <T>(f: () => T | Promise<T>): Promise<T> => {
      const spy = vi.spyOn(Date, 'now').mockImplementation(() => realNow() - 60_000);
      try {
        return await f();
      } finally {
        spy.mockRestore();
      }
    };
    const timerOf = async (id: string) => Number(await c.redis.zscore(c.scheduler.keys.named.timers, id));

    // A retry: its repark from the 'failed' event, sent by the skewed worker.
    const { ids: [j] } = await c.add(1);
    const job = await c.fetchAndClaim('t1');
    await job.moveToFailed(new Error('retryable'), 't1');
    const reparkedAt = await redisNow(c.redis);
    await skewed(() => gate.finished(job));
    await vi.waitFor(() => expect(loop.kicks).toBe(1), POLL);
    expect(await c.record(j)).toMatchObject({ st: 'timer' });
    expect(await timerOf(j)).toBeGreaterThanOrEqual(reparkedAt + backoffMs);
    expect(await c.scheduler.why(j)).toMatchObject({ reason: 'retry_backoff' });

    // A deferral on a provider 429 (20 s), by the same worker: the job's timer and the model's block.
    const { ids: [k], promoted } = await c.add(1);
    expect(promoted).toEqual([k]);
    const kJob = await c.fetchAndClaim('t2');
    const deferredAt = await redisNow(c.redis);
    await skewed(() => gate.defer(kJob, 't2', 20_000, 'provider_rate_limited', FLASH));
    expect(await timerOf(k)).toBeGreaterThanOrEqual(deferredAt + 20_000);
    expect(Number(await c.redis.hget(c.scheduler.keys.named.modelBlock, FLASH))).toBeGreaterThanOrEqual(deferredAt + 20_000);
    expect((await c.scheduler.dispatch()).promoted).toEqual([]);
    await gate.close();
  });

  it('an older worker\'s absolute time (over a year in ms) is still taken as a time: a rolling upgrade keeps its backoffs', async () => {
    const c = await setup();
    const { ids: [j] } = await c.add(1);
    const job = await c.fetchAndClaim('t1');
    await parkActiveJob(job, 't1');
    const at = (await redisNow(c.redis)) + 30_000;
    expect(await c.scheduler.repark(j, at, 'retry_backoff', job.attemptsStarted)).toBe(true);
    expect(Number(await c.redis.zscore(c.scheduler.keys.named.timers, j))).toBe(at);
    await c.scheduler.blockModel(FLASH, at, 'breaker_open');
    expect(Number(await c.redis.hget(c.scheduler.keys.named.modelBlock, FLASH))).toBe(at);
  });

  it('a producer whose clock is 60 s behind Redis\'s still delays a job by its whole delayMs', async () => {
    const prefix = randomPrefix();
    const redis = new Redis(redisUrl(), { maxRetriesPerRequest: null });
    const queue = createAgentQueue({ connection: redis, prefix, retention: { attempts: 3, keepCompletedCount: 100, keepCompletedAgeS: 3600, keepFailedCount: 100, keepFailedAgeS: 3600 } });
    cleanups.push(() => redis.quit());
    cleanups.push(() => queue.close());
    const scheduler = testScheduler(redis, queue as unknown as Queue, prefix);
    const models = { fast: FLASH, pro: 'gemini-2.5-pro' };
    const producer = createJobProducer({
      queue,
      agents: defaultRegistry(),
      models,
      allowedModels: [models.fast, models.pro],
      scheduler,
      retention: { attempts: 3, keepCompletedCount: 100, keepCompletedAgeS: 3600, keepFailedCount: 100, keepFailedAgeS: 3600 },
    });
    const org = randomOrg();
    const delayMs = 2_000;
    const realNow = Date.now.bind(Date);
    const before = await redisNow(redis);
    const spy = vi.spyOn(Date, 'now').mockImplementation(() => realNow() - 60_000);
    let id: string;
    try {
      ({ id } = await producer.enqueue({ agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: 'skewed' }, options: { delayMs } }, { orgId: org }));
    } finally {
      spy.mockRestore();
    }
    // On a timer due no sooner than Redis's time of the enqueue plus the delay, and not dispatched before it.
    expect(await redis.hget(`${scheduler.keys.named.jobPrefix}${id}`, 'st')).toBe('timer');
    expect(Number(await redis.zscore(scheduler.keys.named.timers, id))).toBeGreaterThanOrEqual(before + delayMs);
    expect((await scheduler.dispatch()).promoted).toEqual([]);
    expect(await scheduler.why(id)).toMatchObject({ reason: 'delayed' });
  });
});
