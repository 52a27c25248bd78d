import type { Job } from 'bullmq';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DatabaseUnavailableError, EDBUNAVAILABLE, PromptBuildError } from '../src/shared/core/errors.js';
import { createLogger } from '../src/shared/core/logger.js';
import { carryBilled, classify, databaseDelayMs, isProviderHealthNeutral, MODEL_WIDE_DELAYS, RetryAfterError } from '../src/shared/core/outcomes.js';
import { jobStreamKey } from '../src/shared/core/queue-keys.js';
import { decodeEvent, type ProgressEvent } from '../src/shared/core/stream-event.js';
import type { AgentJobData, AgentResult, BilledCall } from '../src/shared/core/types.js';
import type { AgentRun } from '../src/shared/infra/db/agent-runs.js';
import { createPool } from '../src/shared/infra/db/pool.js';
import { createPricing } from '../src/shared/infra/llm/pricing.js';
import { createCircuitBreaker } from '../src/shared/limits/circuit-breaker.js';
import { RouteFailedError } from '../src/workers/guards/route-guard.js';
import { createAgentProcessor } from '../src/workers/processor.js';
import { randomOrg } from './helpers/env.js';
import { hungPostgres } from './helpers/hung-postgres.js';
import { marker, parseProm, sampleSum } from './helpers/ops.js';
import { orgOutage, refusedPool } from './helpers/org-outage.js';
import { startStack, type Stack } from './helpers/stack.js';
import { usageWritten } from './helpers/usage.js';
import { until, waitsTimeout, POLL } from './helpers/wait.js';

const lost = () => new DatabaseUnavailableError(new Error('Connection terminated unexpectedly'));

describe('an attempt that finds Postgres unavailable waits, it is not retried', () => {
  it('classify: EDBUNAVAILABLE, bare or as the prompt or a route failed on it, is a delay of its own reason, model-wide never, a provider failure never', () => {
    const delay = { kind: 'delay', reason: 'database_unavailable', delayMs: 2000 };
    expect(classify(lost())).toEqual(delay);
    // The knowledge search failed while the prompt was built (call-agent.ts), or a fallback's prompt did.
    expect(classify(new PromptBuildError(lost()))).toEqual(delay);
    expect(classify(new RouteFailedError('both failed', true, EDBUNAVAILABLE))).toEqual(delay);
    expect(MODEL_WIDE_DELAYS.has('database_unavailable')).toBe(false);
    expect(isProviderHealthNeutral(lost())).toBe(true);
    // The explicit "retry, using an attempt" keeps its meaning.
    expect(classify(new RetryAfterError(EDBUNAVAILABLE, 'x', 100))).toEqual({ kind: 'retry', code: EDBUNAVAILABLE, retryAfterMs: 100 });
  });

  it('the wait doubles per deferral in a row from the first to the cap, half of it fixed and half random', () => {
    const opts = { firstMs: 2000, maxMs: 60_000 };
    expect([1, 2, 3, 4, 5, 6, 40].map((n) => databaseDelayMs(n, opts, () => 1))).toEqual([2000, 4000, 8000, 16_000, 32_000, 60_000, 60_000]);
    expect([1, 2, 6].map((n) => databaseDelayMs(n, opts, () => 0))).toEqual([1000, 2000, 30_000]);
  });

  /** One run of the processor (no fair gate) whose chain throws `err`, for a job fetched as `ats` with `noted` in its data. */
  async function deferOnce(err: unknown, ats: number, noted?: { n: number; ats: number }) {
    const writes: unknown[] = [];
    const delays: Array<{ reason: string; delayMs: number }> = [];
    const rows: AgentRun[] = [];
    let delayedTo: number | undefined;
    const job = {
      id: 'job-db',
      timestamp: Date.now(),
      data: { orgId: 'o', agent: 'A', action: 'a', input: {}, enqueuedAt: Date.now(), ...(noted ? { dbDeferrals: noted } : {}) } as AgentJobData,
      attemptsMade: 0,
      attemptsStarted: ats,
      opts: { attempts: 1 },
      updateData: async (d: AgentJobData) => void writes.push(d.dbDeferrals),
      moveToDelayed: async (at: number) => void (delayedTo = at),
    };
    const processor = createAgentProcessor({
      agents: { resolve: () => ({ agent: {} as never, action: { model: 'fast' } as never }), validateInput: (_a, _b, input) => input },
      chain: async () => {
        throw err;
      },
      runs: { record: async (r) => void rows.push(r) },
      models: { fast: 'gemini-fast', pro: 'gemini-pro' },
      logger: createLogger({ level: 'silent' }),
      onDelay: (_ctx, reason, delayMs) => void delays.push({ reason, delayMs }),
      databaseDelay: { firstMs: 1000, maxMs: 60_000 },
    });
    const thrown = await processor(job as unknown as Job<AgentJobData, AgentResult>, 'token').catch((e: Error) => e);
    return { thrown: (thrown as Error).name, writes, delays, rows, delayedTo };
  }

  it('the processor: a deferral right after a deferral waits twice as long, noted in the job data; any run between starts it over', async () => {
    const first = await deferOnce(lost(), 5);
    expect(first).toMatchObject({ thrown: 'DelayedError', writes: [{ n: 1, ats: 5 }], rows: [] });
    expect(first.delays).toHaveLength(1);
    expect(first.delays[0].reason).toBe('database_unavailable');
    expect(first.delays[0].delayMs).toBeGreaterThanOrEqual(500);
    expect(first.delays[0].delayMs).toBeLessThanOrEqual(1000);
    expect(first.delayedTo! - Date.now()).toBeLessThanOrEqual(1000);

    // The fetch after the third deferral in a row: the fourth waits 8x the first.
    const fourth = await deferOnce(new PromptBuildError(lost()), 5, { n: 3, ats: 4 });
    expect(fourth.writes).toEqual([{ n: 4, ats: 5 }]);
    expect(fourth.delays[0].delayMs).toBeGreaterThanOrEqual(4000);
    expect(fourth.delays[0].delayMs).toBeLessThanOrEqual(8000);

    // A run in between (fetch 4 ran and failed, or was parked for want of a slot): a first deferral again.
    const again = await deferOnce(lost(), 5, { n: 3, ats: 3 });
    expect(again.writes).toEqual([{ n: 1, ats: 5 }]);
    expect(again.delays[0].delayMs).toBeLessThanOrEqual(1000);
  });

  it('the processor: calls the run paid for before the outage are a delayed row of their own', async () => {
    const billed: BilledCall = { model: 'gemini-fast', tier: 'standard', usage: { input: 900, output: 100 }, costUsd: 0.0012, standardCostUsd: 0.0012 };
    const err = new PromptBuildError(lost());
    expect(carryBilled(err, billed)).toBe(true);
    const run = await deferOnce(err, 1);
    expect(run.thrown).toBe('DelayedError');
    expect(run.rows).toEqual([expect.objectContaining({ state: 'delayed', error: 'database_unavailable', inputTokens: 900, outputTokens: 100, costUsd: 0.0012 })]);
  });
});

const FIRST_MS = 200;
const MAX_MS = 800;
const MODEL = 'gemini-2.5-flash';
const ADMIN_TOKEN = 'db-unavailable-admin-token-0123456789';

/**
 * Through the whole service on the suite's Redis and PGlite: the worker's knowledge search for one org reaches a
 * Postgres that is down (refused) or hung (every query times out), while the API and other orgs use the real one.
 * JOB_ATTEMPTS is 1: an attempt the outage used would fail the job for good at once.
 */
describe('a Postgres outage on the attempt’s path: the job waits without using an attempt, then completes', () => {
  const outage = orgOutage();
  let gated: Stack;
  let ungated: Stack;
  const pools: pg.Pool[] = [];
  const hung: Array<{ close(): Promise<void> }> = [];
  beforeAll(async () => {
    const env = { JOB_ATTEMPTS: '1', DB_UNAVAILABLE_DELAY_MS: String(FIRST_MS), DB_UNAVAILABLE_MAX_DELAY_MS: String(MAX_MS), BREAKER_FAILURE_THRESHOLD: '1', ADMIN_TOKEN };
    // A route retrying its primary once: a first try that answered unusably, then the outage, in one attempt.
    const routes = { AGENT_ROUTES: JSON.stringify({ 'KnowledgeAssistant:answer': { primary: MODEL, retries: 1 } }) };
    [gated, ungated] = await Promise.all([
      startStack({ ...env, ...routes }, { worker: true, pool: (p) => outage.wrap(p) }),
      startStack(env, { worker: true, pool: (p) => outage.wrap(p), fairDispatch: false }),
    ]);
  });
  afterAll(async () => {
    for (const h of hung) await h.close();
    await Promise.all(pools.map((p) => p.end()));
    await Promise.all([gated?.close(), ungated?.close()]);
  });

  async function downPool(kind: 'refused' | 'hung'): Promise<pg.Pool> {
    let pool: pg.Pool;
    if (kind === 'refused') pool = await refusedPool();
    else {
      const server = await hungPostgres('stalled');
      hung.push(server);
      pool = createPool(server.url, { max: 4, timeouts: { connectMs: 300, queryMs: 300 } });
    }
    pools.push(pool);
    return pool;
  }
  async function newOrg(s: Stack) {
    const org = randomOrg();
    return { org, auth: { authorization: `Bearer ${await s.newKey(org)}` } };
  }
  /**
   * Enqueues the org's question, then takes the database down for the org: the API's admission reads Postgres
   * too (the org's plan and quota), so the job starts a little later (`delayMs`), when the outage has begun.
   */
  async function askThenDown(s: Stack, auth: { authorization: string }, org: string, down: () => void, question: string, options: object = {}) {
    const res = await s.app.inject({
      method: 'POST',
      url: '/v1/jobs',
      headers: auth,
      payload: { agent: 'KnowledgeAssistant', action: 'answer', input: { question, includeIndustryPacks: false }, options: { delayMs: 300, ...options } },
    });
    expect(res.statusCode, res.body).toBe(202);
    down();
    return res.json().id as string;
  }
  const view = async (s: Stack, auth: { authorization: string }, id: string, waitMs = 0) =>
    (await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}${waitMs ? `?waitMs=${waitMs}` : ''}`, headers: auth })).json();
  /** The job's view once `held` says so, or once it ended (completed or failed: what an outage that used its attempt does). */
  const once = (s: Stack, auth: { authorization: string }, id: string, what: string, held: (v: { state: string; waitingFor?: { reason: string } }) => boolean) =>
    until(what, async () => {
      const v = await view(s, auth, id);
      return held(v) || v.state === 'completed' || v.state === 'failed' ? v : undefined;
    });
  /** The database back for `org`: the job's view once it completed, in the one attempt the outage never used. */
  const completedOnceUp = async (s: Stack, auth: { authorization: string }, org: string, id: string) => {
    outage.up(org);
    const done = await once(s, auth, id, 'the job to complete', () => false);
    expect(done.state).toBe('completed');
    expect(done.attempts).toBe(1);
    return done;
  };
  /** Calls that asked the model to generate (a streaming job's are `stream` calls). */
  const generateCalls = (s: Stack) => s.emulator.calls().filter((c) => c.kind === 'generate' || c.kind === 'stream');
  const runs = async (s: Stack, id: string) => {
    await usageWritten(s);
    return (await s.infra.db.pool.query('SELECT attempt, part, state, model, error, input_tokens, output_tokens, cost_usd, embedding_tokens FROM agent_runs WHERE job_id = $1 ORDER BY created_at', [id])).rows;
  };
  /** What the worker told the job's stream at each deferral (a streaming job's `delayed` progress events). */
  async function deferrals(s: Stack, id: string): Promise<ProgressEvent[]> {
    const entries = await s.runtime.deps.redis.xrange(jobStreamKey(s.cfg.QUEUE_PREFIX, id), '-', '+');
    return entries.map(([, fields]) => decodeEvent(fields)).flatMap((e) => (e?.kind === 'progress' && e.progress.stage === 'delayed' ? [e.progress] : []));
  }

  it('Postgres down: the job is parked as database_unavailable (no attempt used, the model never called), each deferral in a row waiting twice as long; it completes once the database is back', async () => {
    const s = gated;
    const { org, auth } = await newOrg(s);
    const refused = await downPool('refused');
    const callsBefore = generateCalls(s).length;
    const scrape = async () => parseProm((await s.app.inject({ method: 'GET', url: '/metrics', headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).body);
    const delaysBefore = sampleSum(await scrape(), 'agentq_job_delays_total', { reason: 'database_unavailable' });
    const question = `What did ${marker()} decide about pricing?`;
    const id = await askThenDown(s, auth, org, () => outage.down(org, refused), question, { stream: true });

    const held = await once(s, auth, id, 'the job to wait for the database', (v) => v.waitingFor?.reason === 'database_unavailable');
    expect(held).toMatchObject({ state: 'waiting', attempts: 0, stage: { name: 'waiting', reason: 'database_unavailable' }, waitingFor: { reason: 'database_unavailable' } });
    expect(Date.parse(held.waitingFor.eta) - Date.now()).toBeLessThanOrEqual(MAX_MS);

    const waits = await until('three deferrals in a row', async () => {
      const d = await deferrals(s, id);
      return d.length >= 3 ? d : undefined;
    });
    waits.slice(0, 3).forEach((d, i) => {
      const full = Math.min(MAX_MS, FIRST_MS * 2 ** i);
      expect(d.reason).toBe('database_unavailable');
      expect(d.delayMs).toBeGreaterThanOrEqual(full / 2);
      expect(d.delayMs).toBeLessThanOrEqual(full);
    });
    expect(sampleSum(await scrape(), 'agentq_job_delays_total', { reason: 'database_unavailable' }) - delaysBefore).toBeGreaterThanOrEqual(3);
    expect(generateCalls(s).length).toBe(callsBefore);

    await completedOnceUp(s, auth, org, id);
    expect(generateCalls(s).length).toBe(callsBefore + 1);
    // Each deferred run embedded the question twice before a table read failed, the semantic cache's lookup (its
    // match failed, the guard went on without the cache) and the search's query: calls paid for, so a delayed row
    // of its own (no model call, cost 0), one per deferral; then the attempt's own row.
    const rows = await runs(s, id);
    // (A start the fair gate parked for want of a slot, reason no_slot, ran no search: no row.)
    const deferred = (await deferrals(s, id)).filter((d) => d.reason === 'database_unavailable');
    expect(rows.map((r) => [r.attempt, r.state])).toEqual([...deferred.map(() => [1, 'delayed']), [1, 'completed']]);
    for (const r of rows.slice(0, -1)) {
      expect(r).toMatchObject({ error: 'database_unavailable', input_tokens: 0, embedding_tokens: 2 * Math.ceil(question.length / 4) });
      expect(Number(r.cost_usd)).toBe(0);
    }
    // Never the model's fault: its breaker (opened by one failure here) counted none.
    const breaker = createCircuitBreaker({ redis: s.runtime.deps.redis, prefix: `${s.cfg.QUEUE_PREFIX}:agentq` });
    expect(await breaker.state(`gemini:${MODEL}`)).toMatchObject({ state: 'closed', consecutiveFailures: 0 });
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout, POLL.timeout));

  it('Postgres hung after the first try paid for an unusable answer: that call is a delayed row of its own, the completed row bills only its own call', async () => {
    const s = gated;
    const { org, auth } = await newOrg(s);
    const m = marker();
    const hungPool = await downPool('hung');
    s.emulator.script({ malformed: true, match: { model: MODEL, promptIncludes: m } });
    const before = s.emulator.calls().length;
    // The first search answers; from the route's second try on every query of the org times out.
    const id = await askThenDown(s, auth, org, () => outage.down(org, hungPool, { passSearches: 1 }), `What did ${m} decide about hiring?`);

    const held = await once(s, auth, id, 'the job to wait for the database', (v) => v.waitingFor?.reason === 'database_unavailable');
    expect(held).toMatchObject({ state: 'waiting', attempts: 0 });
    await until('a second deferral', () => outage.failedSearches(org) >= 2);
    const done = await completedOnceUp(s, auth, org, id);
    expect(done.result).toMatchObject({ route: 'primary', model: MODEL });

    const calls = s.emulator.calls().slice(before).filter((c) => c.kind === 'generate');
    expect(calls.map((c) => [c.model, c.status, c.fault ?? ''])).toEqual([
      [MODEL, 200, 'malformed'],
      [MODEL, 200, ''],
    ]);
    const [unusable, served] = calls;
    const pricing = createPricing();
    const cost = (c: typeof served) => pricing.cost(MODEL, { input: c.promptTokens!, output: c.outputTokens! + (c.thoughtsTokens ?? 0), cached: c.cachedTokens ?? 0 }).costUsd;
    const all = await runs(s, id);
    // The later deferred runs paid for no model call, only their search query's embedding: rows of their own.
    for (const r of all.slice(1, -1)) {
      expect(r).toMatchObject({ attempt: 1, state: 'delayed', error: 'database_unavailable', input_tokens: 0, embedding_tokens: expect.any(Number) });
      expect(r.embedding_tokens).toBeGreaterThan(0);
      expect(Number(r.cost_usd)).toBe(0);
    }
    const rows = [all[0], all[all.length - 1]];
    expect(rows).toMatchObject([
      { attempt: 1, state: 'delayed', error: 'database_unavailable', model: MODEL, input_tokens: unusable.promptTokens },
      { attempt: 1, part: '', state: 'completed', model: MODEL, input_tokens: served.promptTokens },
    ]);
    expect(rows[0].part).not.toBe('');
    expect(Number(rows[0].cost_usd)).toBeGreaterThan(0);
    expect(Number(rows[0].cost_usd)).toBeCloseTo(cost(unusable), 7);
    expect(Number(rows[1].cost_usd)).toBeCloseTo(cost(served), 7);
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout, POLL.timeout));

  it('without the fair gate: the job is BullMQ-delayed without using an attempt, and completes once the database is back', async () => {
    const s = ungated;
    const { org, auth } = await newOrg(s);
    const refused = await downPool('refused');
    const question = `What did ${marker()} decide about funding?`;
    const id = await askThenDown(s, auth, org, () => outage.down(org, refused), question);

    // Delayed at enqueue (delayMs) too: the deferral is the one after the first failed search.
    await until('a deferral', () => outage.failedSearches(org) >= 1);
    const held = await once(s, auth, id, 'the job to be delayed', (v) => v.state === 'delayed');
    expect(held).toMatchObject({ state: 'delayed', attempts: 0 });
    await until('a second deferral', () => outage.failedSearches(org) >= 2);
    await completedOnceUp(s, auth, org, id);
    // Each deferred run's embeddings (the semantic cache's lookup and the search's query, each of the question, made
    // before a table read failed) are a delayed row of its own.
    const rows = await runs(s, id);
    expect(rows.at(-1)).toMatchObject({ attempt: 1, state: 'completed' });
    expect(rows.length).toBeGreaterThanOrEqual(2);
    for (const r of rows.slice(0, -1)) {
      expect(r).toMatchObject({ attempt: 1, state: 'delayed', error: 'database_unavailable', input_tokens: 0, embedding_tokens: 2 * Math.ceil(question.length / 4) });
      expect(Number(r.cost_usd)).toBe(0);
    }
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout, POLL.timeout, POLL.timeout));
});
