import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { parseConfig } from '../src/shared/core/config.js';
import { agentqPrefix, fairKickChannel } from '../src/shared/core/queue-keys.js';
import { QUEUE } from '../src/shared/core/queue-names.js';
import { queueShards } from '../src/shared/core/queue-shards.js';
import { createDispatchLoop } from '../src/shared/fair/dispatch-loop.js';
import type { FairSchedulerOptions } from '../src/shared/fair/fair-scheduler.js';
import { createFairSchedulerFromConfig } from '../src/shared/fair/from-config.js';
import { createModelLeases } from '../src/shared/fair/model-leases.js';
import { parkedJobOptions } from '../src/shared/fair/park.js';
import { subscribeShardChannel } from '../src/shared/infra/redis/shard-channel.js';
import { randomOrg, randomPrefix, redisUrl } from './helpers/env.js';
import { testScheduler } from './helpers/fair.js';
import { startStack, TEST_ENV, type Stack } from './helpers/stack.js';
import { POLL, waitsTimeout } from './helpers/wait.js';

/**
 * A wake-up an enqueue's dispatch leaves (a delayed job's timer, a lane asleep on a limit) must reach a process
 * with a dispatch loop: the API's enqueue is told it without taking it and asks the workers (fair kick channel),
 * whose next dispatch takes it. Before, the API process took it and armed nothing: the job waited for a worker's
 * safety poll, up to 10 s after it was due (a batched rate-limit wake-up was seen lost that way).
 */
describe('fair dispatch: the wake-up an enqueue leaves goes to the workers', () => {
  let s: Stack;
  let sub: Redis;
  beforeAll(async () => {
    s = await startStack({}, { worker: true });
    sub = new Redis(redisUrl());
  });
  afterAll(async () => {
    sub?.disconnect();
    await s?.close();
  });

  it('kicks the workers after an enqueue that leaves a timer, and a worker takes the wake-up', async () => {
    const kicks: string[] = [];
    const channel = fairKickChannel(s.cfg.QUEUE_PREFIX);
    sub.on('smessage', (ch: string, msg: string) => ch === channel && kicks.push(msg));
    await subscribeShardChannel(sub, channel).subscribed;
    const wakeKey = s.runtime.deps.cells[0].scheduler.keys.named.wake;

    // Nothing left to wake up: no kick (the workers are not asked for a dispatch per enqueue).
    const now = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: { agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: 'wake-now' } } });
    expect(now.statusCode).toBe(202);
    await vi.waitFor(async () => expect((await s.app.inject({ method: 'GET', url: `/v1/jobs/${now.json().id}`, headers: s.auth })).json().state).toBe('completed'), { timeout: 15_000 });
    expect(kicks).toEqual([]);

    const delayMs = 1500;
    const later = await s.app.inject({
      method: 'POST',
      url: '/v1/jobs',
      headers: s.auth,
      payload: { agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: 'wake-later' }, options: { delayMs } },
    });
    expect(later.statusCode).toBe(202);
    await vi.waitFor(() => expect(kicks.length).toBeGreaterThanOrEqual(1), { timeout: 10_000 });
    // A worker's dispatch took the wake-up (its timer is armed): the time it names is the job's not-before time.
    await vi.waitFor(async () => expect(Number(await s.runtime.deps.redis.get(wakeKey))).toBeGreaterThan(0), { timeout: 10_000 });
    const view = await vi.waitFor(
      async () => {
        const v = (await s.app.inject({ method: 'GET', url: `/v1/jobs/${later.json().id}`, headers: s.auth })).json();
        expect(v.state).toBe('completed');
        return v;
      },
      { timeout: 30_000, interval: 50 },
    );
    expect(view.result.data.startupId).toBe('wake-later');
  }, waitsTimeout(15_000, 10_000, 10_000, 30_000));
});

/**
 * The same for every other call made where no dispatch loop takes its result: the API's dispatch after a plan
 * change (PUT /admin/orgs/:org/plan), the batch collector's (its cell's scheduler, not the worker loop's), a lease
 * made in an API or producer process. Each leaves the wake-up to a loop (told, not taken) and asks the loops for a
 * dispatch (the scheduler's kick). Before, the call took the wake-up and dropped it: it waited for a worker's safety
 * poll (10 s). A cancel that gives capacity back dispatches in its own call instead, as a release does (a kick raced
 * the removal that follows it). The loop here polls every 10 minutes, so only the hand-over can wake it within the
 * waits' hang guards (POLL, well under that): how long the wake-up took on a loaded machine is no part of what is proven.
 */
describe('fair dispatch: what a call without a dispatch loop leaves goes to the loops', () => {
  const FLASH = 'gemini-2.5-flash';
  const cleanups: Array<() => Promise<unknown>> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  /**
   * One queue, two schedulers on its fair state: the API's (no loop; its kick asks the workers over the fair kick
   * channel, as from-config.ts wires it) and a worker's, whose loop a kick message runs (as worker-service.ts does).
   */
  async function setup(over: Partial<FairSchedulerOptions> = {}, prefix = randomPrefix()) {
    const redis = new Redis(redisUrl(), { maxRetriesPerRequest: null });
    const sub = new Redis(redisUrl());
    const queue = new Queue('fair', { connection: redis, prefix });
    cleanups.push(async () => {
      await queue.close();
      sub.disconnect();
      await redis.quit();
    });
    const channel = fairKickChannel(prefix);
    const kicks: number[] = [];
    const api = testScheduler(redis, queue, prefix, { ...over, kick: () => redis.spublish(channel, '1') });
    const worker = testScheduler(redis, queue, prefix, over);
    const promoted: string[] = [];
    const loop = createDispatchLoop({ scheduler: worker, safetyPollMs: 600_000, onDispatch: (r) => promoted.push(...r.promoted) });
    cleanups.push(() => loop.close());
    sub.on('smessage', (ch: string) => {
      if (ch !== channel) return;
      kicks.push(Date.now());
      void loop.kick();
    });
    await subscribeShardChannel(sub, channel).subscribed;
    // The worker's start-up dispatch (worker-service.ts `ready`): nothing to do yet.
    await loop.kick();
    let seq = 0;
    const add = async (org: string, n: number) => {
      const ids = Array.from({ length: n }, () => `${org}-${seq++}`);
      await queue.addBulk(ids.map((id) => ({ name: 'j', data: { org }, opts: parkedJobOptions(id) })));
      await api.enqueue(ids.map((jobId) => ({ jobId, orgId: org, model: FLASH, estTokens: 0 })), { dispatch: false });
      return ids;
    };
    return { prefix, redis, queue, api, worker, loop, kicks, promoted, add };
  }

  it("a lane asleep on its org's RPM after a dispatch without a loop (a plan change's, the batch collector's) wakes on time, not at the safety poll", async () => {
    const s = await setup();
    const org = randomOrg();
    // 60 a minute: the 61st job's token comes a second after the first 60 took the bucket.
    await s.api.setPlan(org, { rpm: { flash: 60 } });
    const ids = await s.add(org, 61);
    const r = await s.api.dispatch();
    expect(r.promoted).toHaveLength(60);
    expect(r.nextWakeMs).toBeGreaterThan(r.nowMs);
    // Told, not taken: the worker's loop took it (its kick), and dispatches the last job when the token is there.
    await vi.waitFor(async () => expect(await s.queue.getJobState(ids[60])).toBe('waiting'), { ...POLL, interval: 50 });
    expect(s.promoted).toContain(ids[60]);
    expect(s.kicks.length).toBeGreaterThanOrEqual(1);
  });

  it("an enqueue that dispatches and leaves a lane asleep (a worker's fair gate laning a job without a slot, the orphan sweep: no kick of their own) hands the wake-up to the loops", async () => {
    const s = await setup();
    const org = randomOrg();
    await s.api.setPlan(org, { rpm: { flash: 60 } });
    const ids = Array.from({ length: 61 }, (_, i) => `${org}-sweep-${i}`);
    await s.queue.addBulk(ids.map((id) => ({ name: 'j', data: { org }, opts: parkedJobOptions(id) })));
    const r = await s.api.enqueue(ids.map((jobId) => ({ jobId, orgId: org, model: FLASH, estTokens: 0 })));
    expect(r.promoted).toHaveLength(60);
    expect(r.nextWakeMs).toBeGreaterThan(r.nowMs);
    // Told, not taken, and no caller of its own to pass it on: it waited for the loops' safety poll (600 s here).
    await vi.waitFor(async () => expect(await s.queue.getJobState(ids[60])).toBe('waiting'), { ...POLL, interval: 50 });
    expect(s.kicks.length).toBeGreaterThanOrEqual(1);
  });

  it("a cancel that gives back dispatched jobs' slots dispatches the org's capped lane in its own call, the cancelled jobs counted out of the wait list", async () => {
    // A wait list of two jobs (a small worker's ask): the cancelled jobs fill it until the caller removes them.
    const s = await setup({ bufferTarget: 2 });
    const org = randomOrg();
    await s.api.setPlan(org, { concurrency: 2 });
    const ids = await s.add(org, 5);
    // The worker dispatches two (in BullMQ's wait list, not fetched); the others wait for their org's slots.
    await s.loop.kick();
    expect(s.promoted).toEqual([ids[0], ids[1]]);
    // Bull Board's removal of a parent's children (cancelMany), then the API's cancel of one job (cancel): each
    // gives its slots to the next jobs in its own script call, before the removal that follows. Asked of the loops
    // instead (a kick), the dispatch found the cancelled jobs still in the wait list, left no room, and nothing came
    // again until the safety poll (600 s here).
    expect(await s.api.cancelMany([ids[0], ids[1]], { whole: true })).toBe(2);
    expect(await Promise.all([ids[2], ids[3]].map((id) => s.queue.getJobState(id)))).toEqual(['waiting', 'waiting']);
    await s.queue.remove(ids[0]);
    await s.queue.remove(ids[1]);
    expect(await s.api.cancel(ids[2])).toBe(true);
    expect(await s.queue.getJobState(ids[4])).toBe('waiting');
    await s.queue.remove(ids[2]);
    // Nothing left for the loops: no kick.
    expect(s.kicks).toEqual([]);
    // A cancel that takes a job out of its lane frees no slot: nothing dispatched.
    const [sixth] = await s.add(org, 1);
    expect(await s.api.cancel(sixth)).toBe(true);
    expect(s.kicks).toEqual([]);
  });

  it("a cancel of the job a lane slept for (its token estimate) lets the lane's next job go in the same call", async () => {
    const s = await setup();
    const org = randomOrg();
    // 6,000 tokens a minute: 100 a second.
    await s.api.setPlan(org, { tpm: 6000 });
    const job = async (id: string, estTokens: number) => {
      await s.queue.add('j', { org }, parkedJobOptions(id));
      await s.api.enqueue([{ jobId: id, orgId: org, model: FLASH, estTokens }], { dispatch: false });
    };
    await job(`${org}-big`, 5900);
    await s.loop.kick();
    expect(s.promoted).toEqual([`${org}-big`]);
    // ~100 tokens left: the next job needs 3,000 and its lane sleeps ~29 s for them; a small one waits behind it.
    await job(`${org}-huge`, 3000);
    await job(`${org}-small`, 50);
    await s.loop.kick();
    expect(await s.queue.getJobState(`${org}-small`)).toBe('delayed');
    expect(await s.worker.why(`${org}-small`)).toMatchObject({ reason: 'rate_limited' });
    expect(await s.api.cancel(`${org}-huge`)).toBe(true);
    // Dispatched by the cancel's own call, not at the wake time the cancelled job set.
    expect(await s.queue.getJobState(`${org}-small`)).toBe('waiting');
  });

  it('a lease made in a process without a loop (refused: the global bucket is empty) leaves its wake-up to the loops', async () => {
    const base = randomPrefix();
    const globalPrefix = agentqPrefix(base);
    // The model's global limit: 30 a minute, one request every 2 s once drained.
    const limits = () => ({ rpm: 30 });
    const redis = new Redis(redisUrl(), { maxRetriesPerRequest: null });
    cleanups.push(() => redis.quit());
    const leases = createModelLeases({ redis, bucketPrefix: globalPrefix, limits, shards: 2 });
    const s = await setup({ leases, modelLimits: limits }, queueShards(base, 2).prefixes[0]);
    const org = randomOrg();
    const ids = await s.add(org, 1);
    // Another shard took the whole minute's quota.
    expect((await leases.take({ model: FLASH, requests: 30, tokens: 0 })).requests).toBe(30);
    // The API's enqueue dispatches (its producer's own kick is not what is looked at here): the lane lacks its
    // shard's reservoir, the API's scheduler leases, is refused until the next request fits, and its lease call
    // puts the lane to sleep until then.
    const r = await s.api.enqueue([], { dispatch: true });
    expect(r.promoted).toEqual([]);
    // The lease asked the workers (the enqueue's own call does not), whose loop took that wake-up: when the
    // request fits, it leases it and dispatches the job.
    await vi.waitFor(async () => expect(await s.queue.getJobState(ids[0])).toBe('waiting'), { ...POLL, interval: 50 });
    expect(s.promoted).toContain(ids[0]);
    expect(s.kicks.length).toBeGreaterThanOrEqual(1);
  });

  it("the scheduler every process builds asks over the shard's fair kick channel", async () => {
    const prefix = randomPrefix();
    const redis = new Redis(redisUrl(), { maxRetriesPerRequest: null });
    const sub = new Redis(redisUrl());
    const queue = new Queue(QUEUE.agent, { connection: redis, prefix });
    cleanups.push(async () => {
      await queue.close();
      sub.disconnect();
      await redis.quit();
    });
    const cfg = parseConfig({ ...process.env, ...TEST_ENV, REDIS_URL: redisUrl(), QUEUE_PREFIX: prefix });
    const scheduler = createFairSchedulerFromConfig({ redis, queue, cfg });
    const kicks: string[] = [];
    sub.on('smessage', (ch: string, msg: string) => ch === fairKickChannel(prefix) && kicks.push(msg));
    await subscribeShardChannel(sub, fairKickChannel(prefix)).subscribed;
    const org = randomOrg();
    await queue.add('j', { org }, parkedJobOptions(`${org}-0`));
    // A delayed job: its timer is the wake-up the dispatch leaves.
    await scheduler.enqueue([{ jobId: `${org}-0`, orgId: org, model: FLASH, estTokens: 0, delayMs: 60_000 }], { dispatch: false });
    expect((await scheduler.dispatch()).nextWakeMs).toBeGreaterThan(0);
    await vi.waitFor(() => expect(kicks).toEqual(['1']), POLL);
  });
});
