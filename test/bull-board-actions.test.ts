import { randomUUID } from 'node:crypto';
import { Job, UnrecoverableError, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi, type MockInstance } from 'vitest';
import { agentJobKey, agentqPrefix, cancelRequestedKey, dlqMetaKey, guardKeys, idempotencyRecordKey } from '../src/shared/core/queue-keys.js';
import { QUEUE } from '../src/shared/core/queue-names.js';
import { queueShards } from '../src/shared/core/queue-shards.js';
import type { SseMessage } from '../src/producers/client/sse-parser.js';
import { markedJob, openQueue, postBulk, postJob } from './helpers/fair.js';
import { countRoundTrips, naming } from './helpers/round-trips.js';
import { readSseBody } from './helpers/sse.js';
import { replaceChild as replaceChildOf } from './helpers/replaced-child.js';
import { startStack, type Stack } from './helpers/stack.js';
import { POLL, until } from './helpers/wait.js';

const ADMIN_TOKEN = 'board-actions-admin-0123456789';
const headers = { authorization: `Bearer ${ADMIN_TOKEN}` };
const FLASH = 'gemini-2.5-flash';

/** One of Bull Board's actions, through its JSON API (what its page's buttons call). */
const boardAction = (s: Stack, path: string, payload?: object) =>
  s.app.inject({ method: 'PUT', url: `/admin/queues/api/queues/${path}`, headers, ...(payload ? { payload } : {}) });

/**
 * The board's clean of `target` while `spy` holds a window open in it (its one call): answered 204, the window
 * reached once, and the spy restored however it ends (`after` too, e.g. a lock the window set).
 */
async function cleanHolding(s: Stack, target: string, spy: MockInstance, after?: () => Promise<unknown>) {
  try {
    const res = await boardAction(s, `${target}/clean`);
    expect(res.statusCode, res.body).toBe(204);
    expect(spy).toHaveBeenCalledTimes(1);
  } finally {
    spy.mockRestore();
    await after?.();
  }
}

/**
 * Bull Board's actions are BullMQ's own calls: what the fair dispatcher holds for the jobs they remove (a slot, the
 * dispatch's charge) goes back at once, not at the lease sweep, and the org's next job goes.
 */
describe('Bull Board removals, promotes and the fair dispatcher', () => {
  let s: Stack;
  beforeAll(async () => {
    // No worker: jobs dispatched stay in BullMQ's wait list, as they do while every worker is busy.
    s = await startStack({ ADMIN_TOKEN });
  });
  afterAll(async () => s?.close());

  const cell = () => s.runtime.deps.cells[0];
  const stats = (org: string) => cell().scheduler.orgStats(org);
  /** A worker's dispatch, with the ask of a worker that has room for 100 jobs: what the dispatcher hands out waits in BullMQ's wait list. */
  const dispatch = () => cell().scheduler.dispatch({ id: 'board-test-worker', concurrency: 100, ask: 100, ttlMs: 60_000 });
  const state = (id: string) => s.runtime.queue.getJobState(id);
  const newOrg = async (plan: { concurrency: number; rpm: number; tpm: number }) => {
    const org = `org_board_${randomUUID().slice(0, 8)}`;
    await cell().scheduler.setPlan(org, { concurrency: plan.concurrency, rpm: { flash: plan.rpm, pro: plan.rpm }, tpm: plan.tpm });
    return { org, key: await s.newKey(org) };
  };
  /** Redis's clock in ms: the buckets refill by it. */
  const redisMs = async () => {
    const [sec, usec] = await s.runtime.deps.redis.time();
    return Number(sec) * 1000 + Number(usec) / 1000;
  };
  /** A token bucket's level and the Redis time it is read at (a bucket never charged, or full, has no key). */
  const readLevel = async (bucket: string, cap: number) => {
    const [tokens, ts] = await s.runtime.deps.redis.hmget(guardKeys.tokenBucket(agentqPrefix(s.cfg.QUEUE_PREFIX), bucket), 'tokens', 'ts');
    const at = await redisMs();
    return { at, level: tokens === null ? cap : Math.min(cap, Number(tokens) + (at - Number(ts)) * (cap / 60_000)) };
  };
  /** A token bucket's level now: its refill only adds to it, so a lower bound on it holds however long a test takes. */
  const level = async (bucket: string, cap: number) => (await readLevel(bucket, cap)).level;
  /**
   * A bucket's level now less all it can have refilled since `since` (Redis ms, taken before the charges and refunds
   * asserted): at most what those left in it, however long the machine took between them and the read. An upper
   * bound on the level itself held only while that time was short: on a loaded machine the 600 ms that refill an RPM
   * bucket of 10 by a tenth, or the 300 ms that refill a TPM bucket of 100,000 by a job's estimate, pass in a test.
   */
  const unrefilled = async (bucket: string, cap: number, since: number) => {
    const { at, level } = await readLevel(bucket, cap);
    return level - (at - since) * (cap / 60_000);
  };
  const leased = async () => s.runtime.deps.redis.zrange(cell().scheduler.keys.leases, 0, -1);

  it('a job removed after its dispatch gives back its slot and its request at once: the org\'s next job goes', async () => {
    // One slot and one request a minute: the next job needs both back.
    const { org, key } = await newOrg({ concurrency: 1, rpm: 1, tpm: 100_000 });
    const ids = await postBulk(s, key, [markedJob(`rm-${org}-0`, FLASH), markedJob(`rm-${org}-1`, FLASH)]);
    const charged = await redisMs();
    await dispatch();
    expect(await state(ids[0])).toBe('waiting');
    expect(await state(ids[1])).toBe('delayed');
    expect(await stats(org)).toMatchObject({ inFlight: 1, waiting: 1 });
    expect(await unrefilled(`rpm:org:${org}:${FLASH}`, 1, charged)).toBeLessThan(0.1);
    expect(await unrefilled(`tpm:org:${org}:${FLASH}`, 100_000, charged)).toBeLessThan(100_000 - 10);

    // The board's "remove" of a waiting job (job.remove()).
    expect((await boardAction(s, `${QUEUE.agent}/${ids[0]}/clean`)).statusCode).toBe(204);
    expect(await state(ids[0])).toBe('unknown');
    expect(await leased()).not.toContain(ids[0]);
    // It never ran: the slot and the request its dispatch charged went back, and at once to the org's next job,
    // dispatched in the same script call (with one request a minute, only the one given back lets it go now).
    expect(await state(ids[1])).toBe('waiting');
    expect(await stats(org)).toMatchObject({ inFlight: 1, waiting: 0 });
    expect(await leased()).toContain(ids[1]);
    expect(await unrefilled(`rpm:org:${org}:${FLASH}`, 1, charged)).toBeLessThan(0.1);
    expect(await unrefilled(`tpm:org:${org}:${FLASH}`, 100_000, charged)).toBeLessThan(100_000 - 10);
    expect((await dispatch()).promoted).toEqual([]);
  });

  /**
   * The board read the job (its page, then the click), and before its remove went on that job was removed (another
   * removal, a cancel) and its idempotency key made a new job of the id, which the dispatcher dispatched. The board's
   * remove called the dispatcher's cancel by id (until 2026-12-07): it took the new job's slot and dispatch charge,
   * and BullMQ's removal by id then removed the new job the operator never saw.
   */
  it("the board's remove of a job replaced since the board read it leaves the new job, its slot and its dispatch charge", async () => {
    const { org, key } = await newOrg({ concurrency: 1, rpm: 10, tpm: 100_000 });
    const idem = `board-replaced-${org}`;
    const job = { ...markedJob(`replaced-${org}`, FLASH), options: { model: FLASH, idempotencyKey: idem } };
    const id = await postJob(s, key, job);
    const oldTs = (await s.runtime.queue.getJob(id))!.timestamp;
    const charged = await redisMs();
    await dispatch();
    expect(await state(id)).toBe('waiting');
    const { scheduler, queue } = cell();
    const cancel = scheduler.cancel.bind(scheduler);
    let newTs = 0;
    // The window, held where the board's remove reaches the dispatcher: the job read is removed, the key (its record
    // lapsed, by hand here as IDEMPOTENCY_TTL_S would) makes a new job of the id, and that job is dispatched.
    const spy = vi.spyOn(scheduler, 'cancel').mockImplementationOnce(async (jobId, jobTs) => {
      await cancel(jobId);
      await queue.remove(jobId);
      await scheduler.removed([jobId]);
      await until('a clock past the job read', () => Date.now() > oldTs);
      await s.runtime.deps.redis.del(idempotencyRecordKey(s.cfg.QUEUE_PREFIX, jobId));
      expect(await postJob(s, key, job)).toBe(jobId);
      newTs = (await queue.getJob(jobId))!.timestamp;
      // Dispatched: by its add (the wait list has room for the test's worker's ask), else here.
      await dispatch();
      expect(await state(jobId)).toBe('waiting');
      expect(await leased()).toContain(jobId);
      return cancel(jobId, jobTs);
    });
    // The job the board read is gone: its remove answers as BullMQ's remove of a missing job does.
    await cleanHolding(s, `${QUEUE.agent}/${id}`, spy);
    expect(newTs).toBeGreaterThan(oldTs);
    // The new job is still there, dispatched: its slot (the org at its cap of 1) and its charge stand.
    expect(await state(id)).toBe('waiting');
    expect((await s.runtime.queue.getJob(id))!.timestamp).toBe(newTs);
    expect(await leased()).toContain(id);
    expect(await stats(org)).toMatchObject({ inFlight: 1 });
    expect(await unrefilled(`tpm:org:${org}:${FLASH}`, 100_000, charged)).toBeLessThan(100_000 - 10);
    // No hold left on it: the board's own remove of it goes through, giving both back.
    expect(await s.runtime.deps.redis.exists(`${queue.toKey(id)}:lock`)).toBe(0);
    expect((await boardAction(s, `${QUEUE.agent}/${id}/clean`)).statusCode).toBe(204);
    expect(await state(id)).toBe('unknown');
    expect(await stats(org)).toMatchObject({ inFlight: 0 });
  });

  it('the board\'s clean of waiting jobs gives back their slots and charges, and the org\'s parked job goes in the same call', async () => {
    const { org, key } = await newOrg({ concurrency: 3, rpm: 10, tpm: 100_000 });
    const ids = await postBulk(s, key, [0, 1, 2, 3].map((i) => markedJob(`clean-${org}-${i}`, FLASH)));
    await dispatch();
    expect(await Promise.all(ids.map(state))).toEqual(['waiting', 'waiting', 'waiting', 'delayed']);
    expect((await stats(org)).inFlight).toBe(3);
    // The board cleans jobs older than its grace (5 s): these were enqueued a minute ago.
    for (const id of ids.slice(0, 3)) await s.runtime.deps.redis.hset(agentJobKey(s.cfg.QUEUE_PREFIX, id), 'timestamp', String(Date.now() - 60_000));
    const est = Number(await s.runtime.deps.redis.hget(`${cell().scheduler.keys.named.jobPrefix}${ids[3]}`, 'e'));
    expect((await boardAction(s, `${QUEUE.agent}/clean/wait`)).statusCode).toBe(200);
    // The slots freed are used in the `removed` call itself: the fourth job is dispatched there, not at a kick.
    expect(await Promise.all(ids.map(state))).toEqual(['unknown', 'unknown', 'unknown', 'waiting']);
    expect((await stats(org)).inFlight).toBe(1);
    // Three requests and estimates given back, the fourth job's taken.
    expect(await level(`rpm:org:${org}:${FLASH}`, 10)).toBeGreaterThan(8.99);
    expect(await level(`tpm:org:${org}:${FLASH}`, 100_000)).toBeGreaterThan(100_000 - est - 1);
    expect((await dispatch()).promoted).toEqual([]);
  });

  it('the board\'s empty gives back the slots and charges of every dispatched job it takes', async () => {
    const { org, key } = await newOrg({ concurrency: 2, rpm: 10, tpm: 100_000 });
    const ids = await postBulk(s, key, [0, 1, 2].map((i) => markedJob(`empty-${org}-${i}`, FLASH)));
    await dispatch();
    expect((await stats(org)).inFlight).toBe(2);
    expect((await boardAction(s, `${QUEUE.agent}/empty`)).statusCode).toBe(200);
    // BullMQ's drain takes the wait list and the prioritized set, not the parked (delayed) job, which the slots
    // given back then dispatch in the same `removed` call.
    expect(await Promise.all(ids.map(state))).toEqual(['unknown', 'unknown', 'waiting']);
    expect((await stats(org)).inFlight).toBe(1);
    expect(await level(`rpm:org:${org}:${FLASH}`, 10)).toBeGreaterThan(8.99);
    expect((await dispatch()).promoted).toEqual([]);
  });

  it('removing a flow takes its dispatched children with it, and their slots', async () => {
    const { org, key } = await newOrg({ concurrency: 5, rpm: 10, tpm: 100_000 });
    const tasks = [0, 1].map((i) => markedJob(`flow-${org}-${i}`, FLASH));
    const post = await s.app.inject({ method: 'POST', url: '/v1/flows/parallel', headers: { authorization: `Bearer ${key}` }, payload: { tasks } });
    expect(post.statusCode).toBe(202);
    const flowId = post.json().id as string;
    await dispatch();
    expect((await stats(org)).inFlight).toBe(2);
    const children = (await s.app.inject({ method: 'GET', url: `/v1/flows/${flowId}`, headers: { authorization: `Bearer ${key}` } })).json().children.map((c: { id: string }) => c.id);
    expect(await Promise.all(children.map(state))).toEqual(['waiting', 'waiting']);
    expect((await boardAction(s, `${QUEUE.flows}/${flowId}/clean`)).statusCode).toBe(204);
    expect(await Promise.all(children.map(state))).toEqual(['unknown', 'unknown']);
    expect((await stats(org)).inFlight).toBe(0);
  });

  const replaceChild = (org: string, id: string) => replaceChildOf(s, org, id, dispatch);

  /** A flow of two children, both dispatched (a slot each), and its children's ids. */
  async function dispatchedFlow(org: string, key: string, name: string) {
    const tasks = [0, 1].map((i) => markedJob(`${name}-${org}-${i}`, FLASH));
    const post = await s.app.inject({ method: 'POST', url: '/v1/flows/parallel', headers: { authorization: `Bearer ${key}` }, payload: { tasks } });
    expect(post.statusCode).toBe(202);
    const flowId = post.json().id as string;
    await dispatch();
    const children = (await s.app.inject({ method: 'GET', url: `/v1/flows/${flowId}`, headers: { authorization: `Bearer ${key}` } })).json().children.map((c: { id: string }) => c.id) as string[];
    expect(await Promise.all(children.map(state))).toEqual(['waiting', 'waiting']);
    return { flowId, children };
  }

  /** The flow's removal is done: its other child is gone with its slot; the new job under the replaced child's id is there, with its slot and charge. */
  async function expectReplacementKept(org: string, children: string[], newTs: number) {
    expect(await state(children[1])).toBe('unknown');
    expect(await state(children[0])).toBe('waiting');
    expect((await s.runtime.queue.getJob(children[0]))!.timestamp).toBe(newTs);
    expect(await leased()).toContain(children[0]);
    expect(await leased()).not.toContain(children[1]);
    expect(await stats(org)).toMatchObject({ inFlight: 1 });
    // Its own removal still gives both back.
    expect((await boardAction(s, `${QUEUE.agent}/${children[0]}/clean`)).statusCode).toBe(204);
    expect(await stats(org)).toMatchObject({ inFlight: 0 });
  }

  /**
   * The board's removal of a flow read its children, and before the dispatcher's cancel of them came, a child was
   * removed and a new job made under its id, which the dispatcher dispatched. The cancel took the children by id
   * (until 2026-12-07): the new job's slot and dispatch charge went back while BullMQ's removal of the flow, which
   * no longer names that id among its children, left the job in BullMQ, one job over its org's cap.
   */
  it("removing a flow whose child was replaced before the dispatcher's cancel leaves the new job its slot and charge", async () => {
    const { org, key } = await newOrg({ concurrency: 2, rpm: 10, tpm: 100_000 });
    const { flowId, children } = await dispatchedFlow(org, key, 'flow-replaced');
    const { scheduler } = cell();
    const cancelMany = scheduler.cancelMany.bind(scheduler);
    let newTs = 0;
    // The window, held where the removal reaches the dispatcher.
    const spy = vi.spyOn(scheduler, 'cancelMany').mockImplementationOnce(async (jobs, opts) => {
      newTs = await replaceChild(org, children[0]);
      return cancelMany(jobs, opts);
    });
    await cleanHolding(s, `${QUEUE.flows}/${flowId}`, spy);
    await expectReplacementKept(org, children, newTs);
  });

  it("removing a flow whose child was replaced just after the removal read the children leaves the new job its slot and charge", async () => {
    const { org, key } = await newOrg({ concurrency: 2, rpm: 10, tpm: 100_000 });
    const { flowId, children } = await dispatchedFlow(org, key, 'flow-replaced-read');
    const getDependencies = Job.prototype.getDependencies;
    let newTs = 0;
    // The window, held right after the removal read the flow's children: the job under the id is then no child of it.
    const spy = vi.spyOn(Job.prototype, 'getDependencies').mockImplementationOnce(async function (this: Job, ...args: Parameters<Job['getDependencies']>) {
      const read = await getDependencies.apply(this, args);
      newTs = await replaceChild(org, children[0]);
      return read;
    });
    await cleanHolding(s, `${QUEUE.flows}/${flowId}`, spy);
    await expectReplacementKept(org, children, newTs);
  });

  /**
   * As above, the new job under the replaced child's id fetched by a worker (locked). The removal's cancel is all or
   * none for the flow's children (BullMQ refuses the flow's removal while a worker holds one): the new job's lock
   * made it none (until 2026-12-07), and the other child, removed with the flow, lost its slot without its charge back.
   */
  it("removing a flow whose replaced child's new job a worker holds gives back the other child's slot and charge", async () => {
    const { org, key } = await newOrg({ concurrency: 2, rpm: 10, tpm: 100_000 });
    const charged = await redisMs();
    const { flowId, children } = await dispatchedFlow(org, key, 'flow-replaced-held');
    const { scheduler, queue } = cell();
    const cancelMany = scheduler.cancelMany.bind(scheduler);
    const lock = `${queue.toKey(children[0])}:lock`;
    let newTs = 0;
    let taken: number | undefined;
    const spy = vi.spyOn(scheduler, 'cancelMany').mockImplementationOnce(async (jobs, opts) => {
      newTs = await replaceChild(org, children[0]);
      // A worker's fetch takes this lock (the wait list hands out the other child first: set here as it would be).
      await s.runtime.deps.redis.set(lock, 'replacement-worker-token', 'PX', 60_000);
      taken = await cancelMany(jobs, opts);
      return taken;
    });
    await cleanHolding(s, `${QUEUE.flows}/${flowId}`, spy, () => s.runtime.deps.redis.del(lock));
    // The other child was taken by the cancel: its slot and its request back (the new job's request still charged).
    expect(taken).toBe(1);
    expect(await level(`rpm:org:${org}:${FLASH}`, 10)).toBeGreaterThan(8.99);
    expect(await unrefilled(`rpm:org:${org}:${FLASH}`, 10, charged)).toBeLessThan(9.5);
    await expectReplacementKept(org, children, newTs);
  });

  it("removing a flow gives back each child's slot and dispatch charge once, and its laned child leaves the lane", async () => {
    // Three slots: a job of its own and two of the flow's four children are dispatched, the other two children wait
    // in their lane for a slot. Ten requests and 10,000 tokens a minute: what each dispatch charged shows in the
    // org's buckets, whose refill over the test's few seconds is small beside a job's token estimate.
    const TPM = 10_000;
    const { org, key } = await newOrg({ concurrency: 3, rpm: 10, tpm: TPM });
    const alone = await postJob(s, key, markedJob(`flow-alone-${org}`, FLASH));
    const tasks = [0, 1, 2, 3].map((i) => markedJob(`flow-charge-${org}-${i}`, FLASH));
    const post = await s.app.inject({ method: 'POST', url: '/v1/flows/parallel', headers: { authorization: `Bearer ${key}` }, payload: { tasks } });
    expect(post.statusCode).toBe(202);
    const flowId = post.json().id as string;
    const children = (await s.app.inject({ method: 'GET', url: `/v1/flows/${flowId}`, headers: { authorization: `Bearer ${key}` } })).json().children.map((c: { id: string }) => c.id) as string[];
    const charged = await redisMs();
    await dispatch();
    expect(await Promise.all([alone, ...children].map(state))).toEqual(['waiting', 'waiting', 'waiting', 'delayed', 'delayed']);
    expect(await stats(org)).toMatchObject({ inFlight: 3, waiting: 2 });
    // The token estimates the dispatches charge (the dispatcher's record of each job).
    const est = async (id: string) => Number(await s.runtime.deps.redis.hget(cell().scheduler.keys.named.jobPrefix + id, 'e'));
    const [est0, est1, est2] = [await est(children[0]), await est(children[1]), await est(children[2])];
    expect(Math.min(est0, est1, est2)).toBeGreaterThan(100);
    expect(await unrefilled(`rpm:org:${org}:${FLASH}`, 10, charged)).toBeLessThan(7.1);

    // The first child's slot and charge already went back another way (the API's cancel takes it from the
    // dispatcher first, then removes the job): the board's removal must not give them back a second time. The slot
    // went to the third child at once, dispatched (and charged) in the cancel's own call.
    expect(await cell().scheduler.cancel(children[0])).toBe(true);
    expect(await state(children[2])).toBe('waiting');
    expect(await stats(org)).toMatchObject({ inFlight: 3, waiting: 1 });
    const { level: tpmBefore, at: tpmRead } = await readLevel(`tpm:org:${org}:${FLASH}`, TPM);
    // The board's "remove" of the flow's parent (job.remove(): BullMQ takes the children with it).
    expect((await boardAction(s, `${QUEUE.flows}/${flowId}/clean`)).statusCode).toBe(204);
    expect(await Promise.all(children.map(state))).toEqual(['unknown', 'unknown', 'unknown', 'unknown']);
    // The job of its own still holds its slot; the laned child is out of its lane, not waiting for a dispatch.
    expect(await stats(org)).toMatchObject({ inFlight: 1, waiting: 0 });
    const held = await leased();
    expect(held).toContain(alone);
    for (const id of children) expect(held).not.toContain(id);
    // Each child's request back once: only the job of its own is still charged (a second refund of the first
    // child's would fill the bucket). The removal gave back the second and third children's token estimates, not
    // the first's again.
    expect(await level(`rpm:org:${org}:${FLASH}`, 10)).toBeGreaterThan(8.99);
    expect(await unrefilled(`rpm:org:${org}:${FLASH}`, 10, charged)).toBeLessThan(9.5);
    // The refill between the two reads taken off for the upper bound; the lower one as read (a refund fills the
    // bucket up to its capacity, which a slow machine's refill can reach first).
    const refunded = (await level(`tpm:org:${org}:${FLASH}`, TPM)) - tpmBefore;
    expect(refunded).toBeGreaterThan(Math.min(est1 + est2, TPM - tpmBefore) - 1);
    expect((await unrefilled(`tpm:org:${org}:${FLASH}`, TPM, tpmRead)) - tpmBefore).toBeLessThan(est1 + est2 + est0 / 2);
    // Nothing of the flow is dispatched later: the removed child is not in a lane to be handed out.
    expect((await dispatch()).promoted).toEqual([]);
    expect(await stats(org)).toMatchObject({ inFlight: 1, waiting: 0 });
  });

  it("a flow whose child a worker holds is not removed, and its other children keep their lanes and slots; once that child has failed, the removal frees its slot without a refund", async () => {
    // Jobs the tests before left in BullMQ's wait list would be fetched first: the board's empty takes them.
    expect((await boardAction(s, `${QUEUE.agent}/empty`)).statusCode).toBe(200);
    const { org, key } = await newOrg({ concurrency: 2, rpm: 10, tpm: 100_000 });
    const tasks = [0, 1, 2].map((i) => markedJob(`flow-held-${org}-${i}`, FLASH));
    const post = await s.app.inject({ method: 'POST', url: '/v1/flows/parallel', headers: { authorization: `Bearer ${key}` }, payload: { tasks } });
    expect(post.statusCode).toBe(202);
    const flowId = post.json().id as string;
    const children = (await s.app.inject({ method: 'GET', url: `/v1/flows/${flowId}`, headers: { authorization: `Bearer ${key}` } })).json().children.map((c: { id: string }) => c.id) as string[];
    const charged = await redisMs();
    await dispatch();
    expect(await Promise.all(children.map(state))).toEqual(['waiting', 'waiting', 'delayed']);
    // A worker fetches the first child dispatched (BullMQ's wait list is first in, first out): it holds its lock.
    const connection = new Redis(s.cfg.REDIS_URL!, { maxRetriesPerRequest: null });
    const worker = new Worker(QUEUE.agent, null, { connection, prefix: s.cfg.QUEUE_PREFIX, autorun: false });
    let held: Job | undefined;
    try {
      held = (await worker.getNextJob('board-held-token', { block: false }))!;
      expect(held.id).toBe(children[0]);
      // BullMQ refuses to remove a parent whose child is held: a conflict naming that child, in the API's shape
      // (the board's page shows `error`), and nothing of the flow changes here either.
      const refused = await boardAction(s, `${QUEUE.flows}/${flowId}/clean`);
      expect(refused.statusCode).toBe(409);
      expect(refused.json()).toMatchObject({ code: 'ECHILDLOCKED', jobId: flowId });
      expect(refused.json().error).toContain(children[0]);
      // So is the held child's own removal: a worker runs it.
      const running = await boardAction(s, `${QUEUE.agent}/${children[0]}/clean`);
      expect(running.statusCode).toBe(409);
      expect(running.json()).toMatchObject({ code: 'EJOBLOCKED', jobId: children[0] });
      expect(running.json().error).toMatch(new RegExp(`${children[0]}.*running`));
      expect(await Promise.all(children.map(state))).toEqual(['active', 'waiting', 'delayed']);
      expect(await stats(org)).toMatchObject({ inFlight: 2, waiting: 1 });
      expect(await leased()).toEqual(expect.arrayContaining(children.slice(0, 2)));
      expect(await unrefilled(`rpm:org:${org}:${FLASH}`, 10, charged)).toBeLessThan(8.1);

      // The held child fails (its worker's release, which would correct its charge, is still to come): the
      // removal now goes, its slot is freed, and only the child that never ran gets its charge back.
      await held.moveToFailed(new UnrecoverableError('board test: the held child fails'), 'board-held-token', false);
      expect((await boardAction(s, `${QUEUE.flows}/${flowId}/clean`)).statusCode).toBe(204);
      expect(await Promise.all(children.map(state))).toEqual(['unknown', 'unknown', 'unknown']);
      expect(await stats(org)).toMatchObject({ inFlight: 0, waiting: 0 });
      expect(await level(`rpm:org:${org}:${FLASH}`, 10)).toBeGreaterThan(8.99);
      expect(await unrefilled(`rpm:org:${org}:${FLASH}`, 10, charged)).toBeLessThan(9.5);
      expect((await dispatch()).promoted).toEqual([]);
    } finally {
      // A failure above left the child held: its run ends, as its worker's would, or the queue keeps an active job
      // and the obliterate tests below are refused for it (409, EQUEUEACTIVE).
      if (held && (await state(held.id!)) === 'active') await held.moveToFailed(new UnrecoverableError('board test: the held child fails'), 'board-held-token', false);
      await worker.close();
      connection.disconnect();
    }
  });

  it("the board's removal of a flow's unprocessed children gives back their slots and charges, and the laned one leaves its lane", async () => {
    const { org, key } = await newOrg({ concurrency: 1, rpm: 10, tpm: 100_000 });
    const tasks = [0, 1].map((i) => markedJob(`flow-unprocessed-${org}-${i}`, FLASH));
    const post = await s.app.inject({ method: 'POST', url: '/v1/flows/parallel', headers: { authorization: `Bearer ${key}` }, payload: { tasks } });
    expect(post.statusCode).toBe(202);
    const flowId = post.json().id as string;
    const children = (await s.app.inject({ method: 'GET', url: `/v1/flows/${flowId}`, headers: { authorization: `Bearer ${key}` } })).json().children.map((c: { id: string }) => c.id) as string[];
    await dispatch();
    expect(await Promise.all(children.map(state))).toEqual(['waiting', 'delayed']);
    expect(await stats(org)).toMatchObject({ inFlight: 1, waiting: 1 });
    const removed = await boardAction(s, `${QUEUE.flows}/${flowId}/remove-unprocessed-children`);
    expect(removed.statusCode).toBe(200);
    expect(removed.json()).toEqual({ removed: 2 });
    expect(await Promise.all(children.map(state))).toEqual(['unknown', 'unknown']);
    expect(await stats(org)).toMatchObject({ inFlight: 0, waiting: 0 });
    expect(await level(`rpm:org:${org}:${FLASH}`, 10)).toBeGreaterThan(9.99);
    expect(await level(`tpm:org:${org}:${FLASH}`, 100_000)).toBeGreaterThan(100_000 - 1);
  });

  it("the board's promote of a job the dispatcher holds on a timer lanes it as due now, behind its org's concurrency cap: it goes when a slot does", async () => {
    // One slot: the org's first job holds it; the second waits on its own 60 s delay.
    const { org, key } = await newOrg({ concurrency: 1, rpm: 10, tpm: 100_000 });
    const first = await postJob(s, key, markedJob(`promote-cap-${org}-0`, FLASH));
    const timed = await postJob(s, key, { ...markedJob(`promote-cap-${org}-1`, FLASH), options: { model: FLASH, delayMs: 60_000 } });
    await dispatch();
    expect(await state(first)).toBe('waiting');
    expect(await cell().scheduler.why(timed)).toMatchObject({ reason: 'delayed' });
    const record = () => s.runtime.deps.redis.hget(cell().scheduler.keys.named.jobPrefix + timed, 'st');
    expect(await record()).toBe('timer');

    // The board's "promote" (job.promote()).
    expect((await boardAction(s, `${QUEUE.agent}/${timed}/promote`)).statusCode).toBe(204);
    // Off its timer and in its org's lane, due now; still parked in BullMQ (not in its wait list past the cap).
    expect(await s.runtime.deps.redis.zscore(cell().scheduler.keys.named.timers, timed)).toBeNull();
    expect(await record()).toBe('lane');
    expect(await state(timed)).toBe('delayed');
    expect(await cell().scheduler.why(timed)).toMatchObject({ reason: 'org_concurrency' });
    expect(await stats(org)).toMatchObject({ inFlight: 1, waiting: 1 });
    expect((await dispatch()).promoted).toEqual([]);
    // The slot comes back: the promoted job is the org's next, dispatched by the removal's cancel in its own call.
    expect((await boardAction(s, `${QUEUE.agent}/${first}/clean`)).statusCode).toBe(204);
    expect(await state(timed)).toBe('waiting');
    expect(await stats(org)).toMatchObject({ inFlight: 1, waiting: 0 });
  });

  it("the board's promote-all makes every job the dispatcher holds on a timer due now, and its one dispatch keeps each org to its concurrency cap", async () => {
    // Org a: one slot, three jobs on a 60 s delay; org b: five slots, two.
    const a = await newOrg({ concurrency: 1, rpm: 10, tpm: 100_000 });
    const b = await newOrg({ concurrency: 5, rpm: 10, tpm: 100_000 });
    const delayed = (org: string, i: number) => ({ ...markedJob(`promote-all-${org}-${i}`, FLASH), options: { model: FLASH, delayMs: 60_000 } });
    const aIds = [await postJob(s, a.key, delayed(a.org, 0)), await postJob(s, a.key, delayed(a.org, 1)), await postJob(s, a.key, delayed(a.org, 2))];
    const bIds = [await postJob(s, b.key, delayed(b.org, 0)), await postJob(s, b.key, delayed(b.org, 1))];
    const ids = [...aIds, ...bIds];
    // A worker's dispatch (its ask leaves room in BullMQ's wait list): nothing of these is due.
    expect((await dispatch()).promoted.filter((id) => ids.includes(id))).toEqual([]);
    const timer = (id: string) => s.runtime.deps.redis.zscore(cell().scheduler.keys.named.timers, id);
    for (const id of ids) expect(await timer(id)).not.toBeNull();
    // A job BullMQ holds on a delay of its own (added past the dispatcher, not parked): BullMQ's promote is its.
    const queue = openQueue(s);
    const own = (await queue.add('own-delay', {}, { delay: 60_000 })).id!;
    await queue.close();

    // The board's "promote all" (BullMQ's queue.promoteAll).
    expect((await boardAction(s, `${QUEUE.agent}/promote`)).statusCode).toBe(200);
    for (const id of ids) expect(await timer(id)).toBeNull();
    // Dispatched once, in the same request: both of b's jobs, and only one of a's; a's other two wait in its lane,
    // still parked in BullMQ (not in its wait list past the cap).
    expect(await Promise.all(bIds.map(state))).toEqual(['waiting', 'waiting']);
    const aStates = await Promise.all(aIds.map(state));
    expect(aStates.filter((st) => st === 'waiting')).toHaveLength(1);
    expect(aStates.filter((st) => st === 'delayed')).toHaveLength(2);
    expect(await stats(a.org)).toMatchObject({ inFlight: 1, waiting: 2 });
    expect(await stats(b.org)).toMatchObject({ inFlight: 2, waiting: 0 });
    for (const id of aIds.filter((_, i) => aStates[i] === 'delayed')) expect(await cell().scheduler.why(id)).toMatchObject({ reason: 'org_concurrency' });
    expect((await dispatch()).promoted.filter((id) => ids.includes(id))).toEqual([]);
    expect(await state(own)).toBe('waiting');
  });

  it("the board's obliterate of a queue that is not paused is refused: a 409 in the API's shape with its stable code, and nothing is removed", async () => {
    const { key } = await newOrg({ concurrency: 5, rpm: 10, tpm: 100_000 });
    const id = await postJob(s, key, markedJob(`obliterate-running-${randomUUID().slice(0, 8)}`, FLASH));
    await dispatch();
    expect(await state(id)).toBe('waiting');
    // Before, the board's own 400 {error: {key: 'ERRORS.QUEUE_NOT_PAUSED'}}: no message, no code.
    const refused = await boardAction(s, `${QUEUE.agent}/obliterate`, {});
    expect(refused.statusCode).toBe(409);
    expect(refused.json()).toEqual({ error: expect.stringMatching(/^queue agent-jobs was not obliterated: it is not paused; pause it first/), code: 'EQUEUENOTPAUSED', queue: QUEUE.agent });
    expect(await state(id)).toBe('waiting');
  });

  it("the board's obliterate of a queue whose job a worker runs is refused: a 409 in the API's shape with its stable code, and nothing is removed", async () => {
    const { key } = await newOrg({ concurrency: 5, rpm: 10, tpm: 100_000 });
    await postJob(s, key, markedJob(`obliterate-held-${randomUUID().slice(0, 8)}`, FLASH));
    await dispatch();
    // A worker fetches a job of BullMQ's wait list (this one, or one the tests before left there): it holds its lock.
    const connection = new Redis(s.cfg.REDIS_URL!, { maxRetriesPerRequest: null });
    const worker = new Worker(QUEUE.agent, null, { connection, prefix: s.cfg.QUEUE_PREFIX, autorun: false });
    const held = (await worker.getNextJob('board-obliterate-token', { block: false }))!;
    try {
      expect(await state(held.id!)).toBe('active');
      // The board obliterates a paused queue only.
      expect((await boardAction(s, `${QUEUE.agent}/pause`)).statusCode).toBe(200);
      const refused = await boardAction(s, `${QUEUE.agent}/obliterate`, {});
      expect(refused.statusCode).toBe(409);
      expect(refused.json()).toEqual({ error: expect.stringMatching(/not obliterated: workers are running/), code: 'EQUEUEACTIVE', queue: QUEUE.agent });
      expect(await state(held.id!)).toBe('active');
      expect(await s.runtime.queue.getJobCounts('wait', 'delayed')).not.toEqual({ wait: 0, delayed: 0 });
    } finally {
      // Its run ends: the next test obliterates the queue.
      await held.moveToFailed(new UnrecoverableError('board test: the held job fails'), 'board-obliterate-token', false);
      await worker.close();
      connection.disconnect();
      expect((await boardAction(s, `${QUEUE.agent}/resume`)).statusCode).toBe(200);
    }
  });

  it('obliterating the queue gives back every slot its jobs held', async () => {
    const { org, key } = await newOrg({ concurrency: 5, rpm: 10, tpm: 100_000 });
    await postJob(s, key, markedJob(`obliterate-${org}`, FLASH));
    await dispatch();
    expect((await stats(org)).inFlight).toBe(1);
    expect((await boardAction(s, `${QUEUE.agent}/pause`)).statusCode).toBe(200);
    expect((await boardAction(s, `${QUEUE.agent}/obliterate`, {})).statusCode).toBe(200);
    expect(await leased()).toEqual([]);
    expect((await stats(org)).inFlight).toBe(0);
  });
});

describe('Bull Board retries and promotes, with a worker', () => {
  let s: Stack;
  beforeAll(async () => {
    s = await startStack({ ADMIN_TOKEN }, { worker: true });
  });
  afterEach(() => s.emulator.clearFaults());
  afterAll(async () => s?.close());

  const job = (id: string, waitMs = 0) => s.app.inject({ method: 'GET', url: `/v1/jobs/${id}${waitMs ? `?waitMs=${waitMs}` : ''}`, headers: s.auth }).then((r) => r.json());

  it('a streaming job the board retries streams its new run, not the failure that ended the last one', async () => {
    const name = `Board Stream Retry ${randomUUID().slice(0, 8)}`;
    s.emulator.script({ status: 400, message: 'scripted bad request', match: { promptIncludes: name }, times: -1 });
    const input = { startup: { name, industry: 'robotics', stage: 'seed', description: 'streams, fails, is retried' } };
    const { id } = (await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: { agent: 'RiskAnalyzer', action: 'analyze_risks', input, options: { stream: true } } })).json();
    expect(await job(id, 20_000)).toMatchObject({ state: 'failed' });
    s.emulator.clearFaults();
    // The board's "retry all" of the failed jobs (each job's retry).
    const retried = await boardAction(s, `${QUEUE.agent}/retry/failed`);
    expect(retried.statusCode).toBe(200);
    expect(retried.json()).toMatchObject({ retried: 1 });
    const base = s.app.server.listening ? `http://127.0.0.1:${(s.app.server.address() as { port: number }).port}` : await s.app.listen({ port: 0, host: '127.0.0.1' });
    const res = await fetch(`${base}/v1/jobs/${id}/stream`, { headers: s.auth });
    expect(res.status).toBe(200);
    const messages: SseMessage[] = [];
    await readSseBody(res, messages);
    expect(messages.at(-1)?.data).toBe('[DONE]');
    expect(JSON.parse(messages.at(-2)!.data)).toMatchObject({ result: { success: true } });
  });

  it("a failed job the board retries is a DLQ retry: counted, and refused (409) for a fan-out child whose flow has finished, which stays failed and is never run", async () => {
    const name = `Board Replay ${randomUUID().slice(0, 8)}`;
    s.emulator.script({ status: 400, message: 'scripted bad request', match: { promptIncludes: name }, times: -1 });
    const task = (n: string) => ({ agent: 'RiskAnalyzer', action: 'analyze_risks', input: { startup: { name: `${name} ${n}`, industry: 'robotics', stage: 'seed', description: 'fails, is retried by the board' } } });
    const flow = (await s.app.inject({ method: 'POST', url: '/v1/flows/parallel', headers: s.auth, payload: { tasks: [task('child')] } })).json();
    const settled = (await s.app.inject({ method: 'GET', url: `/v1/flows/${flow.id}?waitMs=20000`, headers: s.auth })).json();
    expect(settled.state).toBe('completed');
    const childId = settled.children[0].id as string;
    const alone = await postJob(s, s.apiKey, task('alone'));
    expect(await job(alone, 20_000)).toMatchObject({ state: 'failed' });
    expect(await s.runtime.queue.getJobState(childId)).toBe('failed');
    s.emulator.clearFaults();
    const modelCalls = () => s.emulator.calls().filter((c) => c.kind === 'generate' || c.kind === 'stream').length;
    const calls = modelCalls();

    // The child: its flow settled without it, so a run now would bill a result nobody reads.
    const refused = await boardAction(s, `${QUEUE.agent}/${childId}/retry`);
    expect(refused.statusCode).toBe(409);
    expect(refused.json()).toMatchObject({ code: 'ECONFLICT', reason: 'parent_finished' });
    expect(refused.json().error).toMatch(/has finished and would never read its result/);
    expect(await s.runtime.queue.getJobState(childId)).toBe('failed');
    // "Retry all" of the failed set: the job alone goes, the child is left where it is, the request answers 200
    // (a refusal thrown there ended the board's request at its first page, as a 409).
    const all = await boardAction(s, `${QUEUE.agent}/retry/failed`);
    expect(all.statusCode).toBe(200);
    expect(await s.runtime.queue.getJobState(childId)).toBe('failed');
    // Retried, and the DLQ counts it, as its own retry does.
    expect(await job(alone, 20_000)).toMatchObject({ state: 'completed' });
    expect(await s.runtime.deps.redis.hget(dlqMetaKey(s.cfg.QUEUE_PREFIX, alone), 'retries')).toBe('1');
    // One model call since: the job alone's run; the child was never run.
    expect(modelCalls() - calls).toBe(1);
  });

  it("the board's retry of a failed job reads its DLQ entry in one round trip: its place in the failed set and meta hash beside BullMQ's read of its hash", async () => {
    const name = `Board Retry Trips ${randomUUID().slice(0, 8)}`;
    s.emulator.script({ status: 400, message: 'scripted bad request', match: { promptIncludes: name }, times: -1 });
    const input = { startup: { name, industry: 'robotics', stage: 'seed', description: 'fails, is retried by the board' } };
    const id = await postJob(s, s.apiKey, { agent: 'RiskAnalyzer', action: 'analyze_risks', input });
    expect(await job(id, 20_000)).toMatchObject({ state: 'failed' });
    const meta = dlqMetaKey(s.cfg.QUEUE_PREFIX, id);
    await vi.waitFor(async () => expect(await s.runtime.deps.redis.hget(meta, 'class')).not.toBeNull(), POLL);
    s.emulator.clearFaults();
    // What names the job up to the DLQ's retry script (the one call naming its meta key), the script included: the
    // retried job's run by the worker comes after it.
    let scripted = false;
    const trips = countRoundTrips(s.runtime.deps.redis, (cmd) => {
      if (scripted || !naming([id])(cmd)) return false;
      scripted = /^eval(sha)?$/i.test(cmd.name) && cmd.args.includes(meta);
      return true;
    });
    let res;
    try {
      res = await boardAction(s, `${QUEUE.agent}/${id}/retry`);
    } finally {
      trips.stop();
    }
    expect(res.statusCode).toBe(204);
    expect(scripted).toBe(true);
    expect(await s.runtime.deps.redis.hget(meta, 'retries')).toBe('1');
    // The board's own reads of the job (its hash, its state); the entry's, sent side by side (its place in the failed
    // set and its meta hash in one pipeline, and BullMQ's read of the job's hash); the retry script. Until 2026-12-07
    // the failed set's check went first, in a round trip of its own: 6, three of them agentq's one after another.
    expect(trips.count).toBe(5);
    expect(await job(id, 20_000)).toMatchObject({ state: 'completed' });
  });

  it("a job the board promotes while the dispatcher holds it on its delay's timer is due now: dispatched and run", async () => {
    const id = await postJob(s, s.apiKey, { ...markedJob(`board-promote-${randomUUID().slice(0, 8)}`), options: { delayMs: 60_000 } });
    const scheduler = s.runtime.deps.cells[0].scheduler;
    expect(await scheduler.why(id)).toMatchObject({ reason: 'delayed' });
    expect(await s.runtime.deps.redis.zscore(scheduler.keys.named.timers, id)).not.toBeNull();
    expect((await boardAction(s, `${QUEUE.agent}/${id}/promote`)).statusCode).toBe(204);
    // Its timer is gone: laned as due now (and dispatched by the same call, as the worker's ask leaves room).
    expect(await s.runtime.deps.redis.zscore(scheduler.keys.named.timers, id)).toBeNull();
    await vi.waitFor(async () => expect(await s.runtime.queue.getJobState(id)).toBe('completed'), POLL);
    expect(await job(id)).toMatchObject({ state: 'completed', result: { success: true } });
  });

  it("the board's promote-all of delayed jobs of two orgs makes them due now: none stays on its timer, and all run", async () => {
    const scheduler = s.runtime.deps.cells[0].scheduler;
    const ids: string[] = [];
    for (const key of [await s.newKey(), await s.newKey()]) {
      for (const i of [0, 1]) ids.push(await postJob(s, key, { ...markedJob(`board-promote-all-${randomUUID().slice(0, 8)}-${i}`), options: { delayMs: 60_000 } }));
    }
    for (const id of ids) expect(await scheduler.why(id)).toMatchObject({ reason: 'delayed' });
    expect((await boardAction(s, `${QUEUE.agent}/promote`)).statusCode).toBe(200);
    for (const id of ids) expect(await s.runtime.deps.redis.zscore(scheduler.keys.named.timers, id)).toBeNull();
    await vi.waitFor(async () => expect(await Promise.all(ids.map((id) => s.runtime.queue.getJobState(id)))).toEqual(ids.map(() => 'completed')), POLL);
  });

  it('a completed job the board retries runs again: a cancel marker its last run left does not cancel it', async () => {
    const id = await postJob(s, s.apiKey, markedJob(`board-rerun-${randomUUID().slice(0, 8)}`));
    expect(await job(id, 20_000)).toMatchObject({ state: 'completed' });
    // What a cancel that came as the run ended leaves: the marker of that job (its creation time).
    const { timestamp } = (await s.runtime.queue.getJob(id))!;
    await s.runtime.deps.redis.set(cancelRequestedKey(s.cfg.QUEUE_PREFIX, id), String(timestamp), 'EX', 600);
    expect((await boardAction(s, `${QUEUE.agent}/${id}/retry`)).statusCode).toBe(204);
    expect(await job(id, 20_000)).toMatchObject({ state: 'completed' });
    expect(await s.runtime.deps.redis.exists(cancelRequestedKey(s.cfg.QUEUE_PREFIX, id))).toBe(0);
  });
});

/** With queue shards the board names each shard's copy of a queue by its prefix: its refusals name it so. */
describe('Bull Board obliterate refusals on queue shards', () => {
  let s: Stack;
  beforeAll(async () => {
    s = await startStack({ ADMIN_TOKEN, QUEUE_SHARDS: '2' });
  });
  afterAll(async () => s?.close());

  it("name the queue as the board's URL and page do (the shard's copy, with its prefix)", async () => {
    const org = `org_board_shard_${randomUUID().slice(0, 8)}`;
    const prefix = queueShards(s.cfg.QUEUE_PREFIX, 2).prefixOf(org);
    const boardName = `${prefix}:${QUEUE.agent}`;
    const listed = (await s.app.inject({ method: 'GET', url: '/admin/queues/api/queues', headers })).json().queues.map((q: { name: string }) => q.name);
    expect(listed).toContain(boardName);
    const shardAction = (action: string) => boardAction(s, `${encodeURIComponent(boardName)}/${action}`, {});

    const notPaused = await shardAction('obliterate');
    expect(notPaused.statusCode).toBe(409);
    expect(notPaused.json()).toEqual({ error: expect.stringContaining(`queue ${boardName} was not obliterated: it is not paused`), code: 'EQUEUENOTPAUSED', queue: boardName });

    await postJob(s, await s.newKey(org), markedJob(`obliterate-shard-${org}`, FLASH));
    for (const cell of s.runtime.deps.cells) await cell.scheduler.dispatch({ id: 'board-shard-worker', concurrency: 100, ask: 100, ttlMs: 60_000 });
    const connection = new Redis(s.cfg.REDIS_URL, { maxRetriesPerRequest: null });
    const worker = new Worker(QUEUE.agent, null, { connection, prefix, autorun: false });
    const held = (await worker.getNextJob('board-shard-token', { block: false }))!;
    try {
      expect(held?.data.orgId).toBe(org);
      expect((await shardAction('pause')).statusCode).toBe(200);
      const active = await shardAction('obliterate');
      expect(active.statusCode).toBe(409);
      expect(active.json()).toEqual({ error: expect.stringContaining(`queue ${boardName} was not obliterated: workers are running`), code: 'EQUEUEACTIVE', queue: boardName });
    } finally {
      await held?.moveToFailed(new UnrecoverableError('board test: the held job fails'), 'board-shard-token', false);
      await worker.close();
      connection.disconnect();
    }
  });
});
