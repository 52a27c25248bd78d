import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { idempotencyRecordKey } from '../src/shared/core/queue-keys.js';
import { createOrgStore } from '../src/shared/infra/db/orgs.js';
import { idempotentJobId } from '../src/shared/queue/job-producer.js';
import { createOrgJobIndexReader } from '../src/shared/queue/org-job-index.js';
import { randomOrg } from './helpers/env.js';
import { startStack, type Stack } from './helpers/stack.js';
import { POLL, waitsTimeout } from './helpers/wait.js';
import { freezableProxy } from './helpers/freezable-proxy.js';
import { redisUrl } from './helpers/env.js';

/**
 * An idempotency key is remembered IDEMPOTENCY_TTL_S (a day) from its job's first add, not only while retention
 * keeps the job: KEEP_COMPLETED_COUNT removes a completed job as soon as 10,000 others completed after it (ten
 * seconds at 1,000 jobs/s), after which a re-send ran the work again, a second paid model call. The key's record
 * (queue-keys.ts idempotencyRecordKey) is written by the add itself; a re-send within the window answers the
 * same id with state "unknown" (the job is no longer kept; "cancelled" for a cancelled one, as GET answers), makes no
 * job and takes nothing from the daily limit.
 */

const risk = (name: string, idempotencyKey?: string) => ({
  agent: 'RiskAnalyzer',
  action: 'analyze_risks',
  input: { startup: { name, industry: 'edtech' } },
  ...(idempotencyKey ? { options: { idempotencyKey } } : {}),
});

async function orgWithLimit(s: Stack, limit: number) {
  const org = randomOrg();
  await createOrgStore({ pool: s.infra.db.pool }).upsert({ id: org, dailyJobLimit: limit });
  return { org, auth: { authorization: `Bearer ${await s.newKey(org)}` } };
}

const post = (s: Stack, auth: { authorization: string }, payload: object, url = '/v1/jobs') => s.app.inject({ method: 'POST', url, headers: auth, payload });

/** The `added` events of one job id in the queue's event stream: how many times a job of that id was made. */
async function addedCount(s: Stack, id: string): Promise<number> {
  const entries = await s.runtime.deps.redis.xrange(s.runtime.queue.toKey('events'), '-', '+');
  return entries.filter(([, f]) => f[1] === 'added' && f[3] === id).length;
}

describe.each([
  { name: 'stored by the fair dispatcher', fairDispatch: true },
  { name: 'added by BullMQ (the bench baseline, no dispatcher)', fairDispatch: false },
])('an idempotency key outlives its job: $name', ({ fairDispatch }) => {
  let s: Stack;
  beforeAll(async () => {
    // Retention at its tightest: a completed job is removed the moment it completes.
    s = await startStack({ KEEP_COMPLETED_COUNT: '0' }, { worker: true, fairDispatch });
  });
  afterAll(async () => s?.close());

  /** Sends one request with a key and waits until its job ran and retention removed it. */
  async function ranAndRemoved(auth: { authorization: string }, name: string, key: string): Promise<string> {
    const first = await post(s, auth, risk(name, key));
    expect(first.statusCode).toBe(202);
    const id = first.json().id as string;
    await vi.waitFor(async () => expect(await s.runtime.queue.getJobState(id)).toBe('unknown'), POLL);
    return id;
  }

  it('a re-send after the job was removed answers its id, state unknown: no new job, no model call, no charge', async () => {
    const { org, auth } = await orgWithLimit(s, 2);
    const calls = s.emulator.calls().length;
    const id = await ranAndRemoved(auth, 'Window Co', 'window-1');
    expect(id).toBe(idempotentJobId(org, 'window-1'));
    expect(s.emulator.calls().length).toBe(calls + 1);
    // The record lives the default day, whatever retention did to the job.
    const record = idempotencyRecordKey(s.cfg.QUEUE_PREFIX, id);
    expect(await s.runtime.deps.redis.hgetall(record)).toMatchObject({ id });
    expect(await s.runtime.deps.redis.pttl(record)).toBeGreaterThan(86_000_000);

    for (let i = 0; i < 2; i++) {
      const again = await post(s, auth, risk('Window Co', 'window-1'));
      expect(again.statusCode).toBe(202);
      expect(again.json()).toEqual({ id, state: 'unknown' });
    }
    // In a bulk beside a new job: only the new one is made (and charged).
    const bulk = await post(s, auth, { jobs: [risk('Window Co', 'window-1'), risk('Fresh Co')] }, '/v1/jobs/bulk');
    expect(bulk.statusCode).toBe(202);
    expect(bulk.json().jobs[0]).toEqual({ id, state: 'unknown' });
    expect(await s.runtime.queue.getJobState(id)).toBe('unknown');
    expect(await addedCount(s, id)).toBe(1);
    // The limit of 2 took the first job and the bulk's new one: the re-sends took nothing.
    const full = await post(s, auth, risk('Third Co'));
    expect(full.statusCode).toBe(429);
    expect(full.json()).toMatchObject({ limit: 2, jobsToday: 2 });
  });

  it('concurrent re-sends of a removed job make no job; concurrent first sends of a key make one', async () => {
    const { auth } = await orgWithLimit(s, 10);
    const answers = await Promise.all(Array.from({ length: 6 }, () => post(s, auth, risk('Race Co', 'race-1'))));
    const id = answers[0].json().id as string;
    expect(answers.map((a) => [a.statusCode, a.json().id])).toEqual(answers.map(() => [202, id]));
    await vi.waitFor(async () => expect(await s.runtime.queue.getJobState(id)).toBe('unknown'), POLL);
    const again = await Promise.all(Array.from({ length: 6 }, () => post(s, auth, risk('Race Co', 'race-1'))));
    expect(again.map((a) => [a.statusCode, a.json()])).toEqual(again.map(() => [202, { id, state: 'unknown' }]));
    expect(await addedCount(s, id)).toBe(1);
  });

  it('another request under the key within the window is a 409 naming the field and the job, alone or in a bulk', async () => {
    const { auth } = await orgWithLimit(s, 10);
    const id = await ranAndRemoved(auth, 'Conflict Co', 'conflict-1');
    const other = await post(s, auth, risk('Other Co', 'conflict-1'));
    expect(other.statusCode).toBe(409);
    expect(other.json()).toMatchObject({ code: 'ECONFLICT', jobId: id, details: [{ path: 'options.idempotencyKey' }] });
    expect(other.json().error).toContain(id);
    const bulk = await post(s, auth, { jobs: [risk('New Co'), risk('Other Co', 'conflict-1')] }, '/v1/jobs/bulk');
    expect(bulk.statusCode).toBe(409);
    expect(bulk.json()).toMatchObject({ jobId: id, details: [{ path: 'jobs.1.options.idempotencyKey' }] });
    expect(await s.runtime.queue.getJobState(id)).toBe('unknown');
    expect(await addedCount(s, id)).toBe(1);
  });

  it('POST /v1/stream of a key whose job was removed is a 409 naming the job: nothing left to stream, nothing run again', async () => {
    const { auth } = await orgWithLimit(s, 10);
    const body = risk('Streamed Co', 'stream-1');
    const first = await post(s, auth, body, '/v1/stream');
    expect(first.statusCode).toBe(200);
    const id = first.headers['x-job-id'] as string;
    await vi.waitFor(async () => expect(await s.runtime.queue.getJobState(id)).toBe('unknown'), POLL);
    const again = await post(s, auth, body, '/v1/stream');
    expect(again.statusCode).toBe(409);
    expect(again.json()).toMatchObject({ jobId: id, details: [{ path: 'options.idempotencyKey' }] });
    expect(await addedCount(s, id)).toBe(1);
  });
});

describe('past IDEMPOTENCY_TTL_S the key is free', () => {
  let s: Stack;
  beforeAll(async () => {
    s = await startStack({ IDEMPOTENCY_TTL_S: '1' });
  });
  afterAll(async () => s?.close());

  it('once the record lapsed, a re-send (even of another request) makes a new job under the id', async () => {
    const first = await post(s, s.auth, risk('Lapse Co', 'lapse-1'));
    expect(first.statusCode).toBe(202);
    const id = first.json().id as string;
    const record = idempotencyRecordKey(s.cfg.QUEUE_PREFIX, id);
    expect(await s.runtime.deps.redis.pttl(record)).toBeLessThanOrEqual(1000);
    // Gone by retention (by hand here: no worker runs it).
    const cell = s.runtime.deps.cells[0];
    await cell.scheduler.cancel(id);
    await (await cell.queue.getJob(id))!.remove();
    await vi.waitFor(async () => expect(await s.runtime.deps.redis.exists(record)).toBe(0), POLL);

    const again = await post(s, s.auth, risk('Lapse Co Again', 'lapse-1'));
    expect(again.statusCode).toBe(202);
    expect(again.json()).toEqual({ id, state: 'waiting' });
    expect((await cell.queue.getJob(id))?.data.input).toMatchObject({ startup: { name: 'Lapse Co Again' } });
    expect(await addedCount(s, id)).toBe(2);
    // And the new job is remembered in turn.
    expect(await s.runtime.deps.redis.exists(record)).toBe(1);
  });
});

/**
 * A re-send of a cancelled job answers `cancelled`, as `GET /v1/jobs/:id` does: a job cancelled before it ran is
 * removed (its key's record stands, so the re-send makes no job) and its tombstone tells GET; one cancelled while
 * it ran is failed with the reason `cancelled`. The re-send answered BullMQ's `unknown` and `failed` for them.
 */
describe.each([
  { name: 'stored by the fair dispatcher', fairDispatch: true },
  { name: 'added by BullMQ (the bench baseline, no dispatcher)', fairDispatch: false },
])('a re-send of a cancelled job answers cancelled: $name', ({ fairDispatch }) => {
  let s: Stack;
  beforeAll(async () => {
    s = await startStack({}, { worker: true, fairDispatch });
  });
  afterAll(async () => s?.close());

  const get = (id: string) => s.app.inject({ method: 'GET', url: `/v1/jobs/${id}`, headers: s.auth });

  it('cancelled before it ran (removed, tombstone): the re-send answers cancelled, makes no job', async () => {
    // Delayed a minute: no worker takes it before the cancel.
    const body = { ...risk('Cancelled Co'), options: { idempotencyKey: 'cancel-waiting-1', delayMs: 60_000 } };
    const first = await post(s, s.auth, body);
    expect(first.statusCode).toBe(202);
    const id = first.json().id as string;
    const del = await s.app.inject({ method: 'DELETE', url: `/v1/jobs/${id}`, headers: s.auth });
    expect(del.json()).toMatchObject({ state: 'cancelled' });
    expect((await get(id)).json()).toMatchObject({ id, state: 'cancelled' });

    const again = await post(s, s.auth, body);
    expect(again.statusCode).toBe(202);
    expect(again.json()).toEqual({ id, state: 'cancelled' });
    expect(await s.runtime.queue.getJobState(id)).toBe('unknown');
    expect(await addedCount(s, id)).toBe(1);
    // Another org's key never names this job (the id hashes the org), so its tombstone is never read for it.
    const other = await post(s, { authorization: `Bearer ${await s.newKey()}` }, body);
    expect(other.statusCode).toBe(202);
    expect(other.json().id).not.toBe(id);
    expect(other.json().state).not.toBe('cancelled');
  });

  it('cancelled while it ran (failed, reason cancelled): the re-send answers cancelled', async () => {
    const marker = 'Cancelled While Running Co';
    s.emulator.script({ hang: true, match: { promptIncludes: marker } });
    const body = risk(marker, 'cancel-active-1');
    const first = await post(s, s.auth, body);
    expect(first.statusCode).toBe(202);
    const id = first.json().id as string;
    await vi.waitFor(async () => expect((await get(id)).json().state).toBe('active'), POLL);
    const del = await s.app.inject({ method: 'DELETE', url: `/v1/jobs/${id}`, headers: s.auth });
    expect(del.json()).toMatchObject({ state: 'cancelling' });
    await vi.waitFor(async () => expect((await get(id)).json().state).toBe('cancelled'), POLL);
    expect(await s.runtime.queue.getJobState(id)).toBe('failed');

    const again = await post(s, s.auth, body);
    expect(again.statusCode).toBe(202);
    expect(again.json()).toEqual({ id, state: 'cancelled' });
  }, waitsTimeout(POLL.timeout, POLL.timeout));

  it("a later job of the id (the key's record lapsed) is shown, and once retention removed it, never the old job's cancel", async () => {
    // The tombstone (KEEP_FAILED_AGE_S, 14 days) outlives the key's record (IDEMPOTENCY_TTL_S, a day).
    const body = { ...risk('Tombstone Reuse Co'), options: { idempotencyKey: 'cancel-reused-1', delayMs: 60_000 } };
    const id = (await post(s, s.auth, body)).json().id as string;
    expect((await s.app.inject({ method: 'DELETE', url: `/v1/jobs/${id}`, headers: s.auth })).json()).toMatchObject({ state: 'cancelled' });
    // The record lapses (by hand here, as its TTL would): the key makes a new job under the same id.
    await s.runtime.deps.redis.del(idempotencyRecordKey(s.cfg.QUEUE_PREFIX, id));
    const later = await post(s, s.auth, body);
    expect(later.json()).toEqual({ id, state: 'delayed' });
    expect(await addedCount(s, id)).toBe(2);
    expect((await get(id)).json()).toMatchObject({ id, state: 'delayed' });

    // Gone by retention (by hand here: it waits its delay), as a completed job past KEEP_COMPLETED_COUNT is.
    const cell = s.runtime.deps.cells[0];
    if (fairDispatch) await cell.scheduler.cancel(id);
    await (await cell.queue.getJob(id))!.remove();
    expect((await get(id)).statusCode).toBe(404);
    const again = await post(s, s.auth, body);
    expect(again.statusCode).toBe(202);
    expect(again.json()).toEqual({ id, state: 'unknown' });
    expect(await addedCount(s, id)).toBe(2);
  });
});

/**
 * The key's record is stored with its job, never after it: without the dispatcher (the bench baseline) BullMQ's add
 * was one call and the record's write another, after a read. An enqueue that failed between the two (its add's reply
 * lost: a crash, a connection cut, a command timeout) left the job without its record, and the client's retry found
 * the job and wrote none either: once retention removed the job, a re-send made and ran it again.
 */
describe.each([
  { name: 'stored by the fair dispatcher', fairDispatch: true },
  { name: 'added by BullMQ (the bench baseline, no dispatcher)', fairDispatch: false },
])('an add whose reply is lost leaves its key recorded: $name', ({ fairDispatch }) => {
  let s: Stack;
  let proxy: Awaited<ReturnType<typeof freezableProxy>>;
  beforeAll(async () => {
    proxy = await freezableProxy(new URL(redisUrl()));
    // Every connection of the stack goes through the proxy; a reply held there fails its command after this long.
    s = await startStack({ REDIS_URL: `redis://127.0.0.1:${proxy.port}`, REDIS_COMMAND_TIMEOUT_MS: '1500' }, { worker: false, fairDispatch });
  });
  afterAll(async () => {
    await s?.close();
    proxy?.close();
  });

  it('the failed send, its retry, then retention: a re-send makes no second job', async () => {
    const marker = `Lost Reply ${randomOrg()}`;
    const body = risk(marker, 'lost-reply-1');
    const id = idempotentJobId(s.orgId, 'lost-reply-1');
    // The add (the only request carrying the input) reaches Redis; its reply, and every later one, waits in the proxy.
    proxy.holdRepliesAfter(marker);
    let failed;
    try {
      failed = await post(s, s.auth, body);
    } finally {
      proxy.passReplies();
    }
    expect(failed.statusCode).toBeGreaterThanOrEqual(500);
    // Stored all the same: the client retries, as the 503 tells it to, and gets the job.
    const retry = await post(s, s.auth, body);
    expect(retry.statusCode).toBe(202);
    expect(retry.json()).toMatchObject({ id });
    // Gone by retention (by hand here: no worker runs it).
    const cell = s.runtime.deps.cells[0];
    if (fairDispatch) await cell.scheduler.cancel(id);
    await (await cell.queue.getJob(id))!.remove();

    const again = await post(s, s.auth, body);
    expect(again.statusCode).toBe(202);
    expect(again.json()).toEqual({ id, state: 'unknown' });
    expect(await addedCount(s, id)).toBe(1);
    expect(await s.runtime.deps.redis.hgetall(idempotencyRecordKey(s.cfg.QUEUE_PREFIX, id))).toMatchObject({ id });
  });
});

/**
 * The state a POST answers is the one GET shows for the job, with or without an idempotency key. With the fair
 * dispatcher a new job with a key read its state back, and a `delayMs` job, parked on its timer, answered
 * `waiting` where the same job without a key answered `delayed`, as GET shows it.
 */
describe.each([
  { name: 'stored by the fair dispatcher', fairDispatch: true },
  { name: 'added by BullMQ (the bench baseline, no dispatcher)', fairDispatch: false },
])('the enqueue answers the state GET shows: $name', ({ fairDispatch }) => {
  let s: Stack;
  beforeAll(async () => {
    // No worker: nothing runs or is dispatched between the answer and the GET.
    s = await startStack({}, { worker: false, fairDispatch });
  });
  afterAll(async () => s?.close());

  const get = async (id: string) => (await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}`, headers: s.auth })).json().state as string;

  it.each([
    { options: { delayMs: 60_000 }, shown: 'delayed' },
    { options: {}, shown: 'waiting' },
    // Parked with its priority: until 2026-12-07, with the dispatcher, the enqueue said `prioritized` and GET `waiting`.
    { options: { priority: 5 }, shown: 'prioritized' },
  ])('$options: a new job with or without a key, and a re-send, answer $shown', async ({ options, shown }) => {
    const tag = `${JSON.stringify(options)}-${fairDispatch}`;
    const plain = await post(s, s.auth, { ...risk(`Plain ${tag}`), options });
    const keyed = { ...risk(`Keyed ${tag}`), options: { ...options, idempotencyKey: `state-${tag}` } };
    const first = await post(s, s.auth, keyed);
    const again = await post(s, s.auth, keyed);
    for (const res of [plain, first, again]) {
      expect(res.statusCode).toBe(202);
      expect(res.json().state).toBe(shown);
      expect(await get(res.json().id)).toBe(shown);
    }
    expect(again.json().id).toBe(first.json().id);
  });

  it('a job with a priority reads prioritized from its enqueue until a worker takes it: GET, a re-send and the listing, before and after its dispatch', async () => {
    const org = randomOrg();
    const auth = { authorization: `Bearer ${await s.newKey(org)}` };
    const cell = s.runtime.deps.cells[0];
    const k = cell.queue.keys;
    const listed = async (state: string) => {
      const reader = createOrgJobIndexReader({ redis: s.runtime.deps.redis, prefix: cell.prefix, keys: { job: k[''], completed: k.completed, failed: k.failed, delayed: k.delayed, prioritized: k.prioritized, waitingChildren: k['waiting-children'], active: k.active } });
      const ids: string[] = [];
      for await (const page of reader.pages(org, { state }, 50)) ids.push(...page.map((r) => r.id));
      return ids;
    };
    const keyed = { ...risk('Prioritized Co'), options: { priority: 3, idempotencyKey: `prio-${fairDispatch}` } };
    const first = await post(s, auth, keyed);
    expect(first.statusCode).toBe(202);
    const { id, state } = first.json() as { id: string; state: string };
    const shown = async () => ({
      get: (await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}`, headers: auth })).json().state as string,
      again: (await post(s, auth, keyed)).json().state as string,
      prioritized: await listed('prioritized'),
      waiting: await listed('waiting'),
    });
    expect(state).toBe('prioritized');
    const expected = { get: 'prioritized', again: 'prioritized', prioritized: [id], waiting: [] };
    // Not dispatched yet (with the dispatcher: parked in its lane, no worker has asked for jobs).
    expect(await shown()).toEqual(expected);
    if (fairDispatch) {
      expect(await cell.queue.getJobState(id)).toBe('delayed');
      // A worker's dispatch puts it in BullMQ's prioritized set, where it waits for a fetch.
      expect((await cell.scheduler.dispatch({ id: `w-prio`, concurrency: 4, ask: 4, ttlMs: 60_000 })).promoted).toContain(id);
    }
    expect(await cell.queue.getJobState(id)).toBe('prioritized');
    expect(await shown()).toEqual(expected);
  });
});
