import { Job, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createJobService } from '../src/producers/job-service.js';
import { QUEUE } from '../src/shared/core/queue-names.js';
import { parkActiveJob } from '../src/shared/fair/park.js';
import type { AgentJobData, AgentResult } from '../src/shared/core/types.js';
import { hookExec } from './helpers/exec-hook.js';
import { startStack, type Stack } from './helpers/stack.js';
import { cancelledKey, idempotencyRecordKey } from '../src/shared/core/queue-keys.js';
import { NotFoundError } from '../src/shared/core/errors.js';
import type { RedisClient } from '../src/shared/infra/redis/connection.js';

/**
 * DELETE of a job a worker fetches while the cancel runs: between the API reading the job's state
 * ("waiting") and removing it. The worker's claim in that window must read the cancel, or it would park
 * the job again for its lane (its slot already taken back) and run it later as if never cancelled.
 */
describe('cancelling a job a worker fetches meanwhile', () => {
  let s: Stack;
  beforeAll(async () => {
    s = await startStack({}, { worker: false });
  });
  afterAll(async () => {
    await s?.close();
  });

  it('the claim in the window reads the cancel, and the DELETE answers "cancelling", not an error', async () => {
    const { redis, cells: [{ queue, scheduler }] } = s.runtime.deps;
    const post = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: { agent: 'RiskAnalyzer', action: 'analyze_risks', input: { startup: { name: 'Race Co', industry: 'retail' } } } });
    expect(post.statusCode).toBe(202);
    const id = post.json().id as string;
    const connection = new Redis(s.cfg.REDIS_URL!, { maxRetriesPerRequest: null });
    const worker = new Worker<AgentJobData, AgentResult>(QUEUE.agent, null, { connection, prefix: s.cfg.QUEUE_PREFIX, autorun: false });
    let claimInWindow: Awaited<ReturnType<typeof scheduler.claim>> | undefined;
    const jobs = createJobService({
      queue,
      queueEvents: () => {
        throw new Error('not used');
      },
      redis,
      prefix: s.cfg.QUEUE_PREFIX,
      cancelledTtlS: 60,
      scheduler: {
        why: (jobId) => scheduler.why(jobId),
        // The window: the job leaves its lane, then a worker fetches it (locked: it can no longer be removed)
        // and claims it before the API goes on.
        async cancel(jobId, jobTs) {
          const done = await scheduler.cancel(jobId, jobTs);
          await (await Job.fromId(queue, jobId))!.promote();
          const fetched = await worker.getNextJob('race-token');
          expect(fetched?.id).toBe(jobId);
          claimInWindow = await scheduler.claim(jobId);
          return done;
        },
        removed: (ids) => scheduler.removed(ids),
      },
    });
    const view = await jobs.cancel(s.orgId, id);
    expect(view.state).toBe('cancelling');
    // Its slot was taken back (not held), and the cancel is read: the worker fails it, never parks it again.
    expect(claimInWindow).toMatchObject({ held: false, cancelled: true });
    expect(await (await Job.fromId(queue, id))!.getState()).toBe('active');
    await worker.close(true);
    connection.disconnect();
  });
});

/**
 * DELETE of a job its attempt parked (a deferral, a retry) before that attempt's repark: the dispatcher still
 * holds the job's slot (its lease), which its cancel leaves to the repark, and the repark finds the job gone.
 */
describe('cancelling a job between its attempt\'s park and its repark', () => {
  let s: Stack;
  beforeAll(async () => {
    s = await startStack({}, { worker: false });
  });
  afterAll(async () => {
    await s?.close();
  });

  it('the DELETE frees the job\'s slot at once (not at the lease sweep) and dispatches the org\'s next job in that same call (no kick to the workers)', async () => {
    const { cells: [{ scheduler, queue }] } = s.runtime.deps;
    const prefix = s.cfg.QUEUE_PREFIX;
    await scheduler.setPlan(s.orgId, { concurrency: 1 });
    const post = async () => {
      const res = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: { agent: 'RiskAnalyzer', action: 'analyze_risks', input: { startup: { name: 'Park Co', industry: 'retail' } } } });
      expect(res.statusCode).toBe(202);
      return res.json().id as string;
    };
    const id = await post();
    const next = await post();
    // This process has no dispatch loop: a worker's dispatch (as its loop runs it) sends the first job only.
    const dispatch = () => scheduler.dispatch({ id: 'park-worker', concurrency: 4, ask: 4, ttlMs: 60_000 });
    expect((await dispatch()).promoted).toEqual([id]);
    expect(await scheduler.why(next)).toMatchObject({ reason: 'org_concurrency' });
    // A worker fetches and claims the job, and its attempt parks it (a deferral): its repark has not come yet.
    const connection = new Redis(s.cfg.REDIS_URL!, { maxRetriesPerRequest: null });
    const worker = new Worker<AgentJobData, AgentResult>(QUEUE.agent, null, { connection, prefix, autorun: false });
    const job = await worker.getNextJob('park-token');
    expect(job?.id).toBe(id);
    expect((await scheduler.claim(id)).held).toBe(true);
    await parkActiveJob(job!, 'park-token');
    expect((await scheduler.orgStats(s.orgId)).inFlight).toBe(1);

    const del = await s.app.inject({ method: 'DELETE', url: `/v1/jobs/${id}`, headers: s.auth });
    expect(del.statusCode).toBe(200);
    expect(del.json()).toMatchObject({ state: 'cancelled' });
    // The slot came back and went to the org's next job in the same script call (`removed` dispatches, as `cancel`
    // does): it waits in BullMQ's wait list already, with no dispatch of the test's own. Until 2026-12-06 the API
    // asked the workers' loops over the kick channel instead (a message that can be lost: then their safety poll).
    expect(await queue.getJobState(next)).toBe('waiting');
    expect((await scheduler.orgStats(s.orgId)).inFlight).toBe(1);
    // The attempt's late repark moves nothing and frees nothing more; nothing is left to dispatch.
    expect(await scheduler.repark(id, 1_000, 'provider_rate_limited', job!.attemptsStarted)).toBe(false);
    expect((await dispatch()).promoted).toEqual([]);
    expect((await scheduler.orgStats(s.orgId)).inFlight).toBe(1);
    await worker.close(true);
    connection.disconnect();
  });
});

/**
 * DELETE of a job whose id an idempotency key makes again meanwhile (its record lapsed: job ids derive from keys).
 * The removal and the tombstone were two calls: a new job added between them had its add delete an older tombstone
 * (none yet), and the cancel's late tombstone then described the new job as cancelled (GET and a re-send answered
 * `cancelled` for it once retention removed it). And a cancel whose job was replaced before its removal removed the
 * new job (`job.remove()` by id).
 */
describe('cancelling a job while its idempotency key makes a new job of the id', () => {
  let s: Stack;
  beforeAll(async () => {
    s = await startStack({}, { worker: false });
  });
  afterAll(async () => {
    await s?.close();
  });

  const body = (key: string) => ({ agent: 'RiskAnalyzer', action: 'analyze_risks', input: { startup: { name: 'Reuse Co', industry: 'retail' } }, options: { idempotencyKey: key, delayMs: 60_000 } });
  const send = (key: string) => s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: body(key) });
  const get = (id: string) => s.app.inject({ method: 'GET', url: `/v1/jobs/${id}`, headers: s.auth });
  /** The key's record lapses (by hand here, as IDEMPOTENCY_TTL_S would) and the key is sent again: a new job, same id. */
  async function sendAgainAfterLapse(key: string, id: string) {
    await s.runtime.deps.redis.del(idempotencyRecordKey(s.cfg.QUEUE_PREFIX, id));
    const again = await send(key);
    expect(again.json()).toEqual({ id, state: 'delayed' });
  }
  const jobService = (redis: RedisClient, scheduler: Parameters<typeof createJobService>[0]['scheduler']) =>
    createJobService({
      queue: s.runtime.deps.cells[0].queue,
      queueEvents: () => {
        throw new Error('not used');
      },
      redis,
      prefix: s.cfg.QUEUE_PREFIX,
      cancelledTtlS: 60,
      scheduler,
    });

  it("a new job added right after the removal is never described by the cancel's tombstone", async () => {
    const { redis, cells: [{ queue, scheduler }] } = s.runtime.deps;
    const key = 'cancel-gap-1';
    const id = (await send(key)).json().id as string;
    const oldTs = (await queue.getJob(id))!.timestamp;
    // Every transaction the job service sends on its connection: the first one sent once the job is gone (the
    // cancel's tombstone, when it is written after the removal) waits for the key's new job first.
    let raced = false;
    const hooked = hookExec(redis, async () => {
      if (!raced && !(await redis.exists(queue.toKey(id)))) {
        raced = true;
        await sendAgainAfterLapse(key, id);
      }
    });
    const jobs = jobService(hooked, scheduler);
    expect(await jobs.cancel(s.orgId, id)).toMatchObject({ id, state: 'cancelled' });
    // Removal and tombstone are one step now: no transaction of the job service comes between them.
    if (!raced) await sendAgainAfterLapse(key, id);
    expect((await queue.getJob(id))!.timestamp).not.toBe(oldTs);

    // The new job is not cancelled: no tombstone stands for it, GET and a re-send describe it.
    expect(await redis.get(cancelledKey(s.cfg.QUEUE_PREFIX, id))).toBeNull();
    expect((await get(id)).json()).toMatchObject({ id, state: 'delayed' });
    expect((await send(key)).json()).toEqual({ id, state: 'delayed' });
    // Gone by retention (by hand here: it waits its delay): 404 and `unknown`, never the old job's `cancelled`.
    await scheduler.cancel(id);
    await (await queue.getJob(id))!.remove();
    expect((await get(id)).statusCode).toBe(404);
    expect((await send(key)).json()).toEqual({ id, state: 'unknown' });
  });

  it('a cancel whose job was replaced before its removal leaves the new job, and writes no tombstone', async () => {
    const { redis, cells: [{ queue, scheduler }] } = s.runtime.deps;
    const key = 'cancel-replaced-1';
    const id = (await send(key)).json().id as string;
    const jobs = jobService(redis, {
      why: (jobId) => scheduler.why(jobId),
      // The window: another removal of the job read (a second cancel, a board removal), then the key's new job.
      async cancel(jobId, jobTs) {
        const done = await scheduler.cancel(jobId, jobTs);
        await (await queue.getJob(jobId))!.remove();
        await sendAgainAfterLapse(key, jobId);
        return done;
      },
      removed: (ids) => scheduler.removed(ids),
    });
    await expect(jobs.cancel(s.orgId, id)).rejects.toBeInstanceOf(NotFoundError);
    expect(await queue.getJobState(id)).toBe('delayed');
    expect(await redis.get(cancelledKey(s.cfg.QUEUE_PREFIX, id))).toBeNull();
    expect((await get(id)).json()).toMatchObject({ id, state: 'delayed' });
    // BullMQ's lock key the removal held the new job with is let go of in the same step.
    expect(await redis.exists(`${queue.toKey(id)}:lock`)).toBe(0);
  });

  /**
   * The cancel held between its read and its removal (the hook: the job service's call to the dispatcher, which comes
   * first): the job read is removed there (Bull Board's remove, a second cancel) and the key makes a new job of the id,
   * then the cancel goes on. The dispatcher's cancel took whatever job held the id (until 2026-12-07): the new job's
   * timer, lane, or slot and dispatch charge, while the guarded removal then left that job in BullMQ, out of the
   * dispatcher's hands (parked until the orphan sweep; or waiting with no slot, its org one job over its cap).
   */
  const heldCancel = (sendAgain: (id: string) => Promise<void>, onReplaced: (id: string) => Promise<void>) => {
    const { cells: [{ queue, scheduler }] } = s.runtime.deps;
    let taken: boolean | undefined;
    const jobs = jobService(s.runtime.deps.redis, {
      why: (jobId) => scheduler.why(jobId),
      async cancel(jobId, jobTs) {
        await scheduler.cancel(jobId);
        await (await queue.getJob(jobId))!.remove();
        await scheduler.removed([jobId]);
        await sendAgain(jobId);
        await onReplaced(jobId);
        taken = await scheduler.cancel(jobId, jobTs);
        return taken;
      },
      removed: (ids) => scheduler.removed(ids),
    });
    return { jobs, taken: () => taken };
  };

  it("a cancel held past its job's replacement leaves the new job's timer and batch request alone", async () => {
    const { cells: [{ queue, scheduler, batchStore }] } = s.runtime.deps;
    const key = 'cancel-held-timer-1';
    const id = (await send(key)).json().id as string;
    const oldTs = (await queue.getJob(id))!.timestamp;
    let newTs = 0;
    // The new job's batch-tier request is recorded before the held cancel goes on.
    const held = heldCancel((jobId) => sendAgainAfterLapse(key, jobId), async (jobId) => {
      newTs = (await queue.getJob(jobId))!.timestamp;
      expect(await batchStore.add(jobId, newTs, 'gemini-2.5-flash', { contents: [] }, undefined)).toBe('pending');
    });
    await expect(held.jobs.cancel(s.orgId, id)).rejects.toBeInstanceOf(NotFoundError);
    expect(newTs).not.toBe(oldTs);
    // The dispatcher's cancel took nothing: the job read was gone, and the new one is not its to take.
    expect(held.taken()).toBe(false);
    expect(await queue.getJobState(id)).toBe('delayed');
    expect(await scheduler.why(id)).toMatchObject({ reason: 'delayed' });
    expect((await get(id)).json()).toMatchObject({ id, state: 'delayed', waitingFor: { reason: 'delayed' } });
    expect(await batchStore.job(id, newTs)).toMatchObject({ state: 'pending', ts: newTs });
    await scheduler.cancel(id);
    await (await queue.getJob(id))!.remove();
  });

  it("a cancel held past its job's replacement leaves the new job's slot and dispatch charge alone", async () => {
    const { cells: [{ queue, scheduler }] } = s.runtime.deps;
    await scheduler.setPlan(s.orgId, { concurrency: 1 });
    const key = 'cancel-held-slot-1';
    const payload = { ...body(key), options: { idempotencyKey: key } };
    const res = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload });
    const id = res.json().id as string;
    const dispatch = () => scheduler.dispatch({ id: 'held-worker', concurrency: 4, ask: 4, ttlMs: 60_000 });
    const sendAgain = async (jobId: string) => {
      await s.runtime.deps.redis.del(idempotencyRecordKey(s.cfg.QUEUE_PREFIX, jobId));
      expect((await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload })).json()).toMatchObject({ id: jobId });
    };
    // The new job is dispatched (a slot, its charge taken), not fetched yet, before the held cancel goes on.
    const held = heldCancel(sendAgain, async (jobId) => {
      expect((await dispatch()).promoted).toEqual([jobId]);
      expect(await queue.getJobState(jobId)).toBe('waiting');
    });
    await expect(held.jobs.cancel(s.orgId, id)).rejects.toBeInstanceOf(NotFoundError);
    expect(held.taken()).toBe(false);
    expect(await queue.getJobState(id)).toBe('waiting');
    // Its slot is still held (the org at its cap of 1), and it is the new job's own cancel's to give back.
    expect((await scheduler.orgStats(s.orgId)).inFlight).toBe(1);
    expect((await s.app.inject({ method: 'DELETE', url: `/v1/jobs/${id}`, headers: s.auth })).json()).toMatchObject({ id, state: 'cancelled' });
    expect((await scheduler.orgStats(s.orgId)).inFlight).toBe(0);
  });

  it('a job that completed before its removal keeps its result: 409, not removed as cancelled', async () => {
    const { redis, cells: [{ queue, scheduler }] } = s.runtime.deps;
    const id = (await send('cancel-finished-1')).json().id as string;
    const connection = new Redis(s.cfg.REDIS_URL!, { maxRetriesPerRequest: null });
    const worker = new Worker<AgentJobData, AgentResult>(QUEUE.agent, null, { connection, prefix: s.cfg.QUEUE_PREFIX, autorun: false });
    const result = { output: { risks: [] } } as unknown as AgentResult;
    const jobs = jobService(redis, {
      why: (jobId) => scheduler.why(jobId),
      // The window: a worker fetches the job and completes it before the API goes on.
      async cancel(jobId, jobTs) {
        const done = await scheduler.cancel(jobId, jobTs);
        await (await Job.fromId(queue, jobId))!.promote();
        const fetched = await worker.getNextJob('finish-token');
        expect(fetched?.id).toBe(jobId);
        await fetched!.moveToCompleted(result, 'finish-token', false);
        return done;
      },
      removed: (ids) => scheduler.removed(ids),
    });
    await expect(jobs.cancel(s.orgId, id)).rejects.toThrow(/already completed/);
    expect(await queue.getJobState(id)).toBe('completed');
    expect((await queue.getJob(id))!.returnvalue).toEqual(result);
    expect(await redis.get(cancelledKey(s.cfg.QUEUE_PREFIX, id))).toBeNull();
    await worker.close(true);
    connection.disconnect();
  });
});
