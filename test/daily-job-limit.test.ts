import { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createOrgStore } from '../src/shared/infra/db/orgs.js';
import { randomOrg } from './helpers/env.js';
import { startStack, type Stack } from './helpers/stack.js';
import { usageWritten } from './helpers/usage.js';
import { until, waitsTimeout, POLL } from './helpers/wait.js';

/**
 * An org's daily job limit (orgs.daily_job_limit) is at most that many new jobs admitted per UTC day, whatever
 * the burst, the bulk or the number of API processes: admission reserves a request's new jobs in Redis, all or
 * none. A job once admitted is never refused by it again: its retries, DLQ replays and delays are not new jobs.
 * Before, admission compared the jobs agent_runs held (rows written after attempts end, behind) with the limit:
 * a bulk of 1000 passed a limit of 10, and so did every request before the first rows landed; and the worker's
 * quota guard counted a job's own earlier attempt, holding a retry until midnight.
 */

const risk = (name: string, idempotencyKey?: string) => ({
  agent: 'RiskAnalyzer',
  action: 'analyze_risks',
  input: { startup: { name, industry: 'edtech' } },
  ...(idempotencyKey ? { options: { idempotencyKey } } : {}),
});
const risks = (n: number, tag: string) => Array.from({ length: n }, (_, i) => risk(`${tag}-${i}`));

/** Seconds from now to the next UTC midnight. */
const toMidnightS = () => {
  const now = new Date();
  return (Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate() + 1) - now.getTime()) / 1000;
};

async function orgWithLimit(s: Stack, limit: number, role: 'member' | 'org-admin' = 'member') {
  const org = randomOrg();
  await createOrgStore({ pool: s.infra.db.pool }).upsert({ id: org, dailyJobLimit: limit });
  return { org, auth: { authorization: `Bearer ${await s.newKey(org, role)}` } };
}

describe('daily job limit at admission', () => {
  let s: Stack;
  let queue: Queue;
  const post = (url: string, auth: { authorization: string }, payload: object, app = s.app) => app.inject({ method: 'POST', url, headers: auth, payload });
  /** The org's jobs stored (its job index: every stored job is in it). */
  const storedOf = async (auth: { authorization: string }) => (await s.app.inject({ method: 'GET', url: '/v1/jobs?limit=1000', headers: auth })).json().length as number;

  beforeAll(async () => {
    // Admission's reads of plans and quotas are cached per process, as in production.
    s = await startStack({ QUOTA_CACHE_MS: '5000' });
    queue = new Queue('agent-jobs', { connection: { url: s.cfg.REDIS_URL }, prefix: s.cfg.QUEUE_PREFIX });
  });
  afterAll(async () => {
    await queue?.close();
    await s?.close();
  });

  it('refuses a bulk over what is left of the day whole, with 429, Retry-After to midnight UTC and a JSON body, and stores nothing', async () => {
    const { auth } = await orgWithLimit(s, 5);
    const before = await queue.count();
    const over = await post('/v1/jobs/bulk', auth, { jobs: risks(6, 'over') });
    expect(over.statusCode).toBe(429);
    expect(Math.abs(Number(over.headers['retry-after']) - toMidnightS())).toBeLessThan(120);
    expect(over.json()).toMatchObject({ error: expect.stringMatching(/daily job limit of 5 reached/), limit: 5, jobsToday: 0, requested: 6, retryAfter: Number(over.headers['retry-after']) });
    expect(await queue.count()).toBe(before);
    expect(await storedOf(auth)).toBe(0);

    expect((await post('/v1/jobs/bulk', auth, { jobs: risks(3, 'fits') })).statusCode).toBe(202);
    const rest = await post('/v1/jobs/bulk', auth, { jobs: risks(3, 'rest') });
    expect(rest.statusCode).toBe(429);
    expect(rest.json()).toMatchObject({ limit: 5, jobsToday: 3, requested: 3 });
    for (const name of ['one', 'two']) expect((await post('/v1/jobs', auth, risk(name))).statusCode).toBe(202);
    expect((await post('/v1/jobs', auth, risk('six'))).statusCode).toBe(429);
    expect(await queue.count()).toBe(before + 5);
    expect(await storedOf(auth)).toBe(5);
  });

  it('two API processes sending at once admit no more than the limit together', async () => {
    const other = await startStack({ QUEUE_PREFIX: s.cfg.QUEUE_PREFIX, QUOTA_CACHE_MS: '5000' });
    try {
      const singles = await orgWithLimit(s, 7);
      const answers = await Promise.all(
        Array.from({ length: 20 }, (_, i) => post('/v1/jobs', singles.auth, risk(`race-${i}`), i % 2 ? s.app : other.app)),
      );
      expect(answers.filter((a) => a.statusCode === 202)).toHaveLength(7);
      expect(answers.filter((a) => a.statusCode === 429)).toHaveLength(13);
      expect(await storedOf(singles.auth)).toBe(7);

      const bulks = await orgWithLimit(s, 7);
      const [a, b] = await Promise.all([post('/v1/jobs/bulk', bulks.auth, { jobs: risks(4, 'a') }), post('/v1/jobs/bulk', bulks.auth, { jobs: risks(4, 'b') }, other.app)]);
      expect([a.statusCode, b.statusCode].sort()).toEqual([202, 429]);
      expect(await storedOf(bulks.auth)).toBe(4);
    } finally {
      await other.close();
    }
  });

  it('an idempotent re-send of a job that exists takes nothing from the allowance, alone, in a bulk or at the limit', async () => {
    const { auth } = await orgWithLimit(s, 3);
    const first = await post('/v1/jobs', auth, risk('idem-a', 'key-a'));
    expect(first.statusCode).toBe(202);
    for (let i = 0; i < 3; i++) expect((await post('/v1/jobs', auth, risk('idem-a', 'key-a'))).json().id).toBe(first.json().id);
    // One new job in this bulk: the re-send is not one.
    expect((await post('/v1/jobs/bulk', auth, { jobs: [risk('idem-a', 'key-a'), risk('idem-b')] })).statusCode).toBe(202);
    // One key twice in one request: one job.
    expect((await post('/v1/jobs/bulk', auth, { jobs: [risk('idem-c', 'key-c'), risk('idem-c', 'key-c')] })).statusCode).toBe(202);
    const full = await post('/v1/jobs', auth, risk('idem-d'));
    expect(full.statusCode).toBe(429);
    expect(full.json()).toMatchObject({ limit: 3, jobsToday: 3, requested: 1 });
    // At the limit, a re-send still answers its job.
    const again = await post('/v1/jobs', auth, risk('idem-a', 'key-a'));
    expect(again.statusCode).toBe(202);
    expect(again.json().id).toBe(first.json().id);
    expect(await storedOf(auth)).toBe(3);
  });

  it('two re-sends of one new idempotency key that race: one job, and the loser gives back what it reserved', async () => {
    const { auth } = await orgWithLimit(s, 3);
    // Both requests read the key (no job yet) and reserve before either stores: held at the store until both came.
    const raw = s.runtime.deps.cells[0].scheduler!.raw;
    const orig = raw.enqueue.bind(raw);
    let arrived = 0;
    let open!: () => void;
    const bothThere = new Promise<void>((resolve) => (open = resolve));
    raw.enqueue = async (...a: Parameters<typeof orig>) => {
      if (++arrived === 2) open();
      await bothThere;
      return orig(...a);
    };
    try {
      const [a, b] = await Promise.all([post('/v1/jobs', auth, risk('racer', 'key-r')), post('/v1/jobs', auth, risk('racer', 'key-r'))]);
      expect([a.statusCode, b.statusCode]).toEqual([202, 202]);
      expect(a.json().id).toBe(b.json().id);
    } finally {
      raw.enqueue = orig;
    }
    expect(arrived).toBe(2);
    // One job taken of three: two new ones fit, a third does not.
    for (const name of ['after-1', 'after-2']) expect((await post('/v1/jobs', auth, risk(name))).statusCode).toBe(202);
    expect((await post('/v1/jobs', auth, risk('after-3'))).statusCode).toBe(429);
    expect(await storedOf(auth)).toBe(3);
  });

  it('an add Redis refuses with an error gives its reservation back; one whose outcome is unknown (a lost connection) keeps it', async () => {
    const { auth } = await orgWithLimit(s, 2);
    // The queue's job id counter, which the store script increments before it writes anything, made a string
    // that is not a number: the script fails with Redis's error reply, having stored nothing.
    const client = (await queue.getBackend().client) as unknown as Redis;
    const counter = await client.get(queue.toKey('id'));
    await client.set(queue.toKey('id'), 'not-a-number');
    try {
      const refused = await post('/v1/jobs/bulk', auth, { jobs: risks(2, 'refused') });
      expect(refused.statusCode).toBe(500);
    } finally {
      if (counter === null) await client.del(queue.toKey('id'));
      else await client.set(queue.toKey('id'), counter);
    }
    expect(await storedOf(auth)).toBe(0);
    // The whole day is left: two new jobs fit.
    expect((await post('/v1/jobs/bulk', auth, { jobs: risks(2, 'after-refused') })).statusCode).toBe(202);

    // A connection lost while the add was in flight: it may still land, so its job stays counted.
    const other = await orgWithLimit(s, 2);
    const raw = s.runtime.deps.cells[0].scheduler!.raw;
    const orig = raw.enqueue.bind(raw);
    raw.enqueue = async () => {
      throw new Error('Connection is closed.');
    };
    try {
      expect((await post('/v1/jobs', other.auth, risk('lost'))).statusCode).toBe(503);
    } finally {
      raw.enqueue = orig;
    }
    expect((await post('/v1/jobs', other.auth, risk('kept-1'))).statusCode).toBe(202);
    const full = await post('/v1/jobs', other.auth, risk('kept-2'));
    expect(full.statusCode).toBe(429);
    expect(full.json()).toMatchObject({ limit: 2, jobsToday: 2, requested: 1 });
  });

  it("starts the day's count from the jobs of today agent_runs holds (a Redis that lost the count does not reset the day); a job made yesterday is not one of today", async () => {
    const { org, auth } = await orgWithLimit(s, 3);
    const row = (jobId: string, jobTs: number) =>
      s.infra.db.pool.query(
        `INSERT INTO agent_runs (job_id, job_ts, attempt, org_id, agent, action, model, state, input_tokens, output_tokens, cost_usd, duration_ms)
         VALUES ($1, $2, 1, $3, 'RiskAnalyzer', 'analyze_risks', 'm', 'completed', 1, 1, 0, 1)`,
        [jobId, jobTs, org],
      );
    const now = new Date();
    await row('ran-1', now.getTime());
    await row('ran-2', now.getTime());
    // Made yesterday, run today.
    await row('late', Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate()) - 1000);
    const bulk = await post('/v1/jobs/bulk', auth, { jobs: risks(2, 'seeded') });
    expect(bulk.statusCode).toBe(429);
    expect(bulk.json()).toMatchObject({ limit: 3, jobsToday: 2, requested: 2 });
    expect((await post('/v1/jobs', auth, risk('seeded-one'))).statusCode).toBe(202);
    expect((await post('/v1/jobs', auth, risk('seeded-two'))).statusCode).toBe(429);
  });
});

describe('daily job limit without the fair dispatcher (the bench baseline)', () => {
  let s: Stack;
  beforeAll(async () => {
    s = await startStack({ QUOTA_CACHE_MS: '5000' }, { fairDispatch: false });
  });
  afterAll(async () => s?.close());
  const post = (url: string, auth: { authorization: string }, payload: object) => s.app.inject({ method: 'POST', url, headers: auth, payload });
  const storedOf = async (auth: { authorization: string }) => (await s.app.inject({ method: 'GET', url: '/v1/jobs?limit=1000', headers: auth })).json().length as number;

  it('two sends of one new idempotency key that race: one job, and the loser gives back what it reserved', async () => {
    const { auth } = await orgWithLimit(s, 3);
    // Both requests read the key (no job yet) and reserve before either stores: the transactions that add a job with
    // its key's record (HSETNX) are held at their exec until both came.
    const client = await s.runtime.deps.cells[0].queue.getBackend().client;
    const multi = client.multi;
    let arrived = 0;
    let open!: () => void;
    const bothThere = new Promise<void>((resolve) => (open = resolve));
    client.multi = () => {
      const tx = multi();
      const ioTx = tx as unknown as { hsetnx: (...a: unknown[]) => unknown };
      const hsetnx = ioTx.hsetnx.bind(tx);
      const exec = tx.exec.bind(tx);
      let recorded = false;
      ioTx.hsetnx = (...a: unknown[]) => ((recorded = true), hsetnx(...a));
      tx.exec = async () => {
        if (recorded) {
          if (++arrived === 2) open();
          await bothThere;
        }
        return exec();
      };
      return tx;
    };
    try {
      const [a, b] = await Promise.all([post('/v1/jobs', auth, risk('racer', 'key-r')), post('/v1/jobs', auth, risk('racer', 'key-r'))]);
      expect([a.statusCode, b.statusCode]).toEqual([202, 202]);
      expect(a.json().id).toBe(b.json().id);
    } finally {
      client.multi = multi;
    }
    expect(arrived).toBe(2);
    // One job taken of three: two new ones fit, a third does not.
    for (const name of ['after-1', 'after-2']) expect((await post('/v1/jobs', auth, risk(name))).statusCode).toBe(202);
    expect((await post('/v1/jobs', auth, risk('after-3'))).statusCode).toBe(429);
    expect(await storedOf(auth)).toBe(3);
  });
});

describe('daily job limit at run time: an admitted job is not a new job', () => {
  let s: Stack;
  let queue: Queue;
  beforeAll(async () => {
    // A retry's backoff long enough to wait for its first attempt's row to be written, then cut short by hand.
    s = await startStack({ JOB_ATTEMPTS: '2', BACKOFF_BASE_MS: '600000', BACKOFF_MAX_MS: '600000', QUOTA_CACHE_MS: '0' }, { worker: true });
    queue = new Queue('agent-jobs', { connection: { url: s.cfg.REDIS_URL }, prefix: s.cfg.QUEUE_PREFIX });
  });
  afterAll(async () => {
    s.emulator.clearFaults();
    await queue?.close();
    await s?.close();
  });

  const view = async (auth: { authorization: string }, id: string, waitMs = 0) =>
    (await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}${waitMs ? `?waitMs=${waitMs}` : ''}`, headers: auth })).json();
  const rowsOf = async (id: string) => (await s.infra.db.pool.query('SELECT attempt, state FROM agent_runs WHERE job_id = $1 ORDER BY attempt', [id])).rows;

  it('the retry of a job that used the whole day runs, its first attempt counted in agent_runs', async () => {
    const { org, auth } = await orgWithLimit(s, 1);
    s.emulator.script({ status: 500, match: { promptIncludes: 'retried-at-limit' }, times: 1 });
    const post = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: auth, payload: risk('retried-at-limit') });
    expect(post.statusCode).toBe(202);
    const id = post.json().id as string;
    await until('the first attempt failed, its retry waiting out its backoff', async () => (await view(auth, id)).waitingFor?.reason === 'retry_backoff');
    await usageWritten(s);
    expect(await rowsOf(id)).toEqual([{ attempt: 1, state: 'failed' }]);
    // The backoff cut short: the retry is dispatched now.
    const scheduler = s.runtime.deps.cellOf(org).scheduler!;
    expect(await scheduler.repark(id, 0, 'retry_backoff')).toBe(true);
    await scheduler.dispatch();
    const done = await view(auth, id, 20_000);
    expect(done).toMatchObject({ state: 'completed', attempts: 2 });
  }, waitsTimeout(POLL.timeout, POLL.timeout));

  it('a pipeline run that stops early gives back the steps it never made', async () => {
    // Its start reserved all three steps; the first fails for good (a 400), the other two are never made.
    const { auth } = await orgWithLimit(s, 3);
    const company = 'Stopped Early Co';
    s.emulator.script({ status: 400, match: { promptIncludes: company }, times: 1 });
    const input = { companyName: company, answers: [{ question: 'What do you build?', answer: 'Robots.' }] };
    const post = await s.app.inject({ method: 'POST', url: '/v1/pipelines/wizard_completion', headers: auth, payload: { input } });
    expect(post.statusCode).toBe(202);
    const run = (await s.app.inject({ method: 'GET', url: `/v1/pipelines/runs/${post.json().id}?waitMs=20000`, headers: auth })).json();
    expect(run.steps.map((st: { state: string }) => st.state)).toEqual(['failed', 'skipped', 'skipped']);
    // One job of the day (the first step); the two never made are the org's again.
    for (const name of ['after-run-1', 'after-run-2']) expect((await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: auth, payload: risk(name) })).statusCode).toBe(202);
    const over = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: auth, payload: risk('after-run-3') });
    expect(over.statusCode).toBe(429);
    expect(over.json()).toMatchObject({ limit: 3, jobsToday: 3 });
  });

  it('a DLQ replay of a job that used the whole day runs', async () => {
    const { auth } = await orgWithLimit(s, 1, 'org-admin');
    s.emulator.script({ status: 400, match: { promptIncludes: 'replayed-at-limit' }, times: 1 });
    const post = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: auth, payload: risk('replayed-at-limit') });
    expect(post.statusCode).toBe(202);
    const id = post.json().id as string;
    expect(await view(auth, id, 20_000)).toMatchObject({ state: 'failed' });
    await usageWritten(s);
    expect(await rowsOf(id)).toEqual([{ attempt: 1, state: 'failed' }]);
    await until('the failed job in the DLQ', async () => (await s.app.inject({ method: 'GET', url: `/v1/dlq/${id}`, headers: auth })).statusCode === 200);
    const replay = await s.app.inject({ method: 'POST', url: `/v1/dlq/${id}/retry`, headers: auth, payload: {} });
    expect(replay.statusCode).toBe(202);
    expect(await view(auth, id, 20_000)).toMatchObject({ state: 'completed' });
  }, waitsTimeout(POLL.timeout, POLL.timeout));
});
