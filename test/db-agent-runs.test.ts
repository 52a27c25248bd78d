import { randomUUID } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { afterBatchPart, createRunStore, stalledRunPart, type AgentRun } from '../src/shared/infra/db/agent-runs.js';
import { migrate, MIGRATIONS_DIR } from '../src/shared/infra/db/migrate.js';
import { createOrgStore } from '../src/shared/infra/db/orgs.js';
import { createPool } from '../src/shared/infra/db/pool.js';
import { createQuotaChecker } from '../src/shared/infra/db/quotas.js';
import { utcDayOf } from '../src/shared/limits/daily-jobs.js';
import { createKnowledgeStore } from '../src/shared/knowledge/knowledge-store.js';
import { createHashEmbed } from './helpers/hash-embed.js';
import { databaseUrl, randomOrg } from './helpers/env.js';

const run = (over: Partial<AgentRun> & Pick<AgentRun, 'orgId'>): AgentRun => ({
  jobId: randomUUID(),
  attempt: 1,
  agent: 'knowledge',
  action: 'ask',
  model: 'gemini-2.5-flash',
  state: 'completed',
  inputTokens: 100,
  outputTokens: 50,
  costUsd: 0.001,
  durationMs: 100,
  ...over,
});

describe('agent_runs', () => {
  let pool: pg.Pool;
  beforeAll(async () => {
    pool = createPool(databaseUrl(), { max: 2 });
    await migrate(pool);
  });
  afterAll(() => pool.end());

  it('records each attempt once, however often it is re-delivered', async () => {
    const runs = createRunStore({ pool });
    const orgId = randomOrg();
    const jobId = randomUUID();
    expect(await runs.record(run({ orgId, jobId, attempt: 1, state: 'failed', error: 'timeout' }))).toBe(true);
    expect(await runs.record(run({ orgId, jobId, attempt: 2 }))).toBe(true);
    expect(await runs.record(run({ orgId, jobId, attempt: 2, costUsd: 99 }))).toBe(false);
    expect(await runs.countSuccessful(jobId)).toBe(1);
    const { rows } = await pool.query('SELECT attempt, cost_usd FROM agent_runs WHERE job_id = $1 ORDER BY attempt', [jobId]);
    expect(rows.map((r) => [r.attempt, Number(r.cost_usd)])).toEqual([
      [1, 0.001],
      [2, 0.001],
    ]);
  });

  it('a job id reused by a new job (an idempotency key sent again after its job was removed): the new job\'s attempts are rows of their own, counted as another job by quotas and usage', async () => {
    const runs = createRunStore({ pool });
    const orgId = randomOrg();
    const jobId = `idem-${randomUUID()}`;
    // Both jobs of today (UTC): the first made at midnight.
    const today = utcDayOf(Date.now()).startMs;
    const first = today;
    const second = Date.now();
    expect(await runs.record(run({ orgId, jobId, jobTs: first, attempt: 1 }))).toBe(true);
    expect(await runs.record(run({ orgId, jobId, jobTs: first, attempt: 1, costUsd: 99 }))).toBe(false);
    expect(await runs.recordMany([run({ orgId, jobId, jobTs: second, attempt: 1 }), run({ orgId, jobId, jobTs: first, attempt: 1 })])).toBe(1);
    const { rows } = await pool.query('SELECT job_ts, cost_usd FROM agent_runs WHERE job_id = $1 ORDER BY job_ts', [jobId]);
    expect(rows.map((r) => [Number(r.job_ts), Number(r.cost_usd)])).toEqual([
      [first, 0.001],
      [second, 0.001],
    ]);
    const [total] = await runs.usage({ orgId, from: new Date(Date.now() - 86_400_000), to: new Date(Date.now() + 60_000), groupBy: 'total' });
    expect(total).toMatchObject({ jobs: 2, costUsd: 0.002 });
    await createOrgStore({ pool }).upsert({ id: orgId, dailyJobLimit: 2 });
    expect((await createQuotaChecker({ pool }).read(orgId, today)).daily).toEqual({ limit: 2, recorded: 2, dayStartMs: today });
  });

  it("a delayed part of an attempt (its paid calls before a delay) is a row of its own beside the attempt's: recorded once however often redelivered, summed by usage and the budget, never another job", async () => {
    const runs = createRunStore({ pool });
    const quotas = createQuotaChecker({ pool });
    const orgId = randomOrg();
    const jobId = randomUUID();
    const jobTs = Date.now();
    const delayed = run({ orgId, jobId, jobTs, attempt: 1, state: 'delayed', part: randomUUID(), error: 'provider_rate_limited', costUsd: 0.4, durationMs: 9000 });
    // The sink commits it, then is killed before its ack: the entry is delivered and written again, alone or in a batch.
    expect(await runs.recordMany([delayed])).toBe(1);
    expect(await runs.record(delayed)).toBe(false);
    // The same attempt's own row (it ran again after the delay, under the same number), and a second delay's part.
    const again = run({ orgId, jobId, jobTs, attempt: 1, state: 'delayed', part: randomUUID(), error: 'rate_limited', costUsd: 0.1, durationMs: 9000 });
    expect(await runs.recordMany([delayed, run({ orgId, jobId, jobTs, attempt: 1, costUsd: 0.6, durationMs: 100 }), again, delayed])).toBe(2);
    const { rows } = await pool.query('SELECT attempt, state, cost_usd FROM agent_runs WHERE job_id = $1 ORDER BY cost_usd', [jobId]);
    expect(rows.map((r) => [r.attempt, r.state, Number(r.cost_usd)])).toEqual([
      [1, 'delayed', 0.1],
      [1, 'delayed', 0.4],
      [1, 'completed', 0.6],
    ]);
    const [total] = await runs.usage({ orgId, from: new Date(Date.now() - 86_400_000), to: new Date(Date.now() + 60_000), groupBy: 'total' });
    // One job; every paid call's cost; the attempts' durations only (a delayed part is no attempt).
    expect(total).toMatchObject({ jobs: 1, inputTokens: 300, cacheHitRate: 0, p50Ms: 100, p95Ms: 100 });
    expect(total.costUsd).toBeCloseTo(1.1, 8);
    await createOrgStore({ pool }).upsert({ id: orgId, monthlyBudgetUsd: 1, dailyJobLimit: 5 });
    expect(await quotas.check(orgId)).toMatchObject({ allowed: false, reason: expect.stringContaining('monthly budget') });
    expect((await quotas.read(orgId, utcDayOf(jobTs).startMs)).daily?.recorded).toBe(1);
    // A delayed row is told from the attempt's by its part: one without, or an attempt's row with one, is refused.
    await expect(runs.record(run({ orgId, state: 'delayed' }))).rejects.toMatchObject({ code: '23514' });
    await expect(runs.record(run({ orgId, part: randomUUID() }))).rejects.toMatchObject({ code: '23514' });
  });

  it("a run the stalled check handed out again is a row beside the first run's (migration 026): both paid calls counted, each run's row written once", async () => {
    const runs = createRunStore({ pool });
    const orgId = randomOrg();
    const jobId = randomUUID();
    const jobTs = Date.now();
    const first = run({ orgId, jobId, jobTs, attempt: 1, costUsd: 0.3 });
    const rerun = run({ orgId, jobId, jobTs, attempt: 1, part: stalledRunPart(1), costUsd: 0.5 });
    expect(stalledRunPart(0)).toBe('');
    expect(stalledRunPart(undefined)).toBe('');
    // Each entry delivered twice (a sink killed before its ack), in one batch and alone.
    expect(await runs.recordMany([first, rerun, rerun, first])).toBe(2);
    expect(await runs.record(rerun)).toBe(false);
    const [total] = await runs.usage({ orgId, from: new Date(Date.now() - 86_400_000), to: new Date(Date.now() + 60_000), groupBy: 'total' });
    expect(total).toMatchObject({ jobs: 1, inputTokens: 200 });
    expect(total.costUsd).toBeCloseTo(0.8, 8);
    // Only a stalled run's part beside '' for an attempt's row; a delayed part still needs an id.
    await expect(runs.record(run({ orgId, part: 'rerun' }))).rejects.toMatchObject({ code: '23514' });
    await expect(runs.record(run({ orgId, state: 'delayed', part: '' }))).rejects.toMatchObject({ code: '23514' });
  });

  it("the standard-tier calls a run made after its batch answer are a row beside the answer's (migration 027): counted in the sums, never as an attempt's duration or cache decision", async () => {
    const runs = createRunStore({ pool });
    const orgId = randomOrg();
    const jobId = randomUUID();
    const jobTs = Date.now();
    const answer = run({ orgId, jobId, jobTs, tier: 'batch', costUsd: 0.1, durationMs: 400, cacheHit: null });
    const after = (n: number) => run({ orgId, jobId, jobTs, part: afterBatchPart(n), tier: 'standard', costUsd: 0.3, durationMs: 0, cacheHit: null });
    expect(afterBatchPart(undefined)).toBe('standard:0');
    // The answer's row sent by both runs (once kept), each run's own standard row, each delivered twice.
    expect(await runs.recordMany([answer, after(0), answer, after(1), after(0)])).toBe(3);
    expect(await runs.recordMany([{ ...answer, state: 'failed', error: 'x', part: afterBatchPart(2) }])).toBe(1);
    const window = { orgId, from: new Date(Date.now() - 86_400_000), to: new Date(Date.now() + 60_000) };
    const [total] = await runs.usage({ ...window, groupBy: 'total' });
    expect(total).toMatchObject({ jobs: 1, p50Ms: 400, p95Ms: 400, cacheHitRate: 0 });
    expect(total.costUsd).toBeCloseTo(0.8, 8);
    const byTier = await runs.usage({ ...window, groupBy: 'tier' });
    expect(byTier.map((r) => [r.key, Number(r.costUsd.toFixed(8))])).toEqual([['batch', 0.2], ['standard', 0.6]]);
  });

  it('stores an attempt whose error text holds a NUL, alone and in a batch: one such row never blocks the usage sink', async () => {
    // Postgres keeps no NUL in text; an error message can carry one (an upstream body, a model's output quoted).
    const runs = createRunStore({ pool });
    const orgId = randomOrg();
    const nul = 'upstream said \u0000 here';
    const alone = run({ orgId, state: 'failed', error: nul });
    expect(await runs.record(alone)).toBe(true);
    const batch = [run({ orgId }), run({ orgId, state: 'failed', error: nul }), run({ orgId })];
    expect(await runs.recordMany(batch)).toBe(3);
    const { rows } = await pool.query<{ error: string | null }>('SELECT error FROM agent_runs WHERE org_id = $1 AND error IS NOT NULL', [orgId]);
    expect(rows.map((r) => r.error)).toEqual(['upstream said \uFFFD here', 'upstream said \uFFFD here']);
  });

  it('reports usage grouped by agent, model and UTC day, within the window and org', async () => {
    const runs = createRunStore({ pool });
    const orgId = randomOrg();
    const day1 = new Date('2031-03-01T10:00:00Z');
    const day2 = new Date('2031-03-02T23:30:00Z');
    const retried = randomUUID();
    await runs.record(run({ orgId, jobId: retried, attempt: 1, state: 'failed', durationMs: 400, costUsd: 0.002, createdAt: day1 }));
    await runs.record(run({ orgId, jobId: retried, attempt: 2, durationMs: 200, costUsd: 0.003, createdAt: day1 }));
    await runs.record(run({ orgId, durationMs: 10, costUsd: 0, inputTokens: 0, outputTokens: 0, cacheHit: 'l2', createdAt: day1 }));
    for (const ms of [100, 200, 300, 400]) {
      await runs.record(run({ orgId, agent: 'scorer', action: 'score', model: 'gemini-2.5-pro', durationMs: ms, costUsd: 0.01, createdAt: day2 }));
    }
    await runs.record(run({ orgId, createdAt: new Date('2031-04-01T00:00:00Z') })); // outside the window
    await runs.record(run({ orgId: randomOrg(), createdAt: day1 })); // another org

    const window = { orgId, from: new Date('2031-03-01T00:00:00Z'), to: new Date('2031-04-01T00:00:00Z') };
    const byAgent = await runs.usage({ ...window, groupBy: 'agent' });
    expect(byAgent.map((r) => r.key)).toEqual(['knowledge', 'scorer']);
    const knowledge = byAgent[0];
    expect(knowledge).toMatchObject({ jobs: 2, inputTokens: 200, outputTokens: 100 });
    expect(knowledge.costUsd).toBeCloseTo(0.005, 8);
    expect(knowledge.cacheHitRate).toBeCloseTo(0.5); // 1 of 2 completed attempts came from cache
    expect(knowledge.p50Ms).toBe(200);
    const scorer = byAgent[1];
    expect(scorer).toMatchObject({ jobs: 4, cacheHitRate: 0, p50Ms: 250 });
    expect(scorer.p95Ms).toBeCloseTo(385);
    expect(scorer.costUsd).toBeCloseTo(0.04, 8);

    const byModel = await runs.usage({ ...window, groupBy: 'model' });
    expect(byModel.map((r) => [r.key, r.jobs])).toEqual([
      ['gemini-2.5-flash', 2],
      ['gemini-2.5-pro', 4],
    ]);
    const byDay = await runs.usage({ ...window, groupBy: 'day' });
    expect(byDay.map((r) => [r.key, r.jobs])).toEqual([
      ['2031-03-01', 2],
      ['2031-03-02', 4],
    ]);
  });

  it("groupBy=model shows an attempt's embedding calls under the embedding model: a run delayed after a semantic-cache lookup with no model call is no spend of the job's chat model", async () => {
    const runs = createRunStore({ pool, embeddingModel: 'gemini-embedding-001' });
    const orgId = randomOrg();
    const at = new Date('2031-05-01T10:00:00Z');
    const jobId = randomUUID();
    const embedding = { embeddingTokens: 40, embeddingCostUsd: 0.000006, embeddingEstimated: true };
    // The run delayed after its lookup (model columns 0, migration 022), then the attempt that called the model.
    await runs.record(run({ orgId, jobId, state: 'delayed', part: randomUUID(), inputTokens: 0, outputTokens: 0, costUsd: 0, createdAt: at, ...embedding }));
    await runs.record(run({ orgId, jobId, createdAt: at, ...embedding }));
    // Another job of the model, with no embedding call.
    await runs.record(run({ orgId, createdAt: at }));
    const window = { orgId, from: new Date('2031-05-01T00:00:00Z'), to: new Date('2031-05-02T00:00:00Z') };
    const byModel = await runs.usage({ ...window, groupBy: 'model' });
    // The delayed run paid the embedding model alone: its job counts there too (EMBEDDING_ONLY).
    expect(byModel.map((r) => [r.key, r.jobs, r.inputTokens, r.costUsd, r.embeddingTokens])).toEqual([
      ['gemini-2.5-flash', 2, 200, 0.002, 0],
      ['gemini-embedding-001', 1, 0, 0, 80],
    ]);
    expect(byModel[1].embeddingCostUsd).toBeCloseTo(0.000012, 10);
    expect(byModel[1]).toMatchObject({ cacheHitRate: 0, p50Ms: 0, p95Ms: 0 });
    // The other groupings and the total keep each row whole.
    const [total] = await runs.usage({ ...window, groupBy: 'total' });
    expect(total).toMatchObject({ jobs: 2, inputTokens: 200, embeddingTokens: 80 });
    expect(total.costUsd).toBeCloseTo(0.002, 8);
    expect((await runs.usage({ ...window, groupBy: 'agent' })).map((r) => [r.key, r.embeddingTokens])).toEqual([['knowledge', 80]]);
  });

  it("groupBy=tier shows an attempt's embedding calls under the standard tier, the price they were billed at, whatever its chat call's tier", async () => {
    const runs = createRunStore({ pool, embeddingModel: 'gemini-embedding-001' });
    const orgId = randomOrg();
    const at = new Date('2031-06-01T10:00:00Z');
    const embedding = { embeddingTokens: 40, embeddingCostUsd: 0.000006, embeddingEstimated: true };
    // A batch-tier attempt and a flex one that made embedding calls, and a standard one that made none.
    await runs.record(run({ orgId, tier: 'batch', costUsd: 0.0005, standardCostUsd: 0.001, createdAt: at, ...embedding }));
    await runs.record(run({ orgId, tier: 'flex', costUsd: 0.0005, standardCostUsd: 0.001, createdAt: at, ...embedding }));
    await runs.record(run({ orgId, createdAt: at }));
    const window = { orgId, from: new Date('2031-06-01T00:00:00Z'), to: new Date('2031-06-02T00:00:00Z') };
    const byTier = await runs.usage({ ...window, groupBy: 'tier' });
    expect(byTier.map((r) => [r.key, r.jobs, r.inputTokens, Number(r.costUsd.toFixed(8)), Number(r.standardCostUsd.toFixed(8)), r.embeddingTokens])).toEqual([
      ['batch', 1, 100, 0.0005, 0.001, 0],
      ['flex', 1, 100, 0.0005, 0.001, 0],
      ['standard', 1, 100, 0.001, 0.001, 80],
    ]);
    expect(byTier[2].embeddingCostUsd).toBeCloseTo(0.000012, 10);
    expect(byTier[0]).toMatchObject({ embeddingCostUsd: 0, p50Ms: 100 });
    // The standard group's attempt figures are its one attempt's: the embedding halves are no attempt.
    expect(byTier[2]).toMatchObject({ cacheHitRate: 0, p50Ms: 100, p95Ms: 100 });
    // The total keeps each row whole, and the tiers add up to it.
    const [total] = await runs.usage({ ...window, groupBy: 'total' });
    expect(total).toMatchObject({ jobs: 3, inputTokens: 300, embeddingTokens: 80 });
    expect(total.costUsd).toBeCloseTo(byTier.reduce((n, r) => n + r.costUsd, 0), 10);
    expect(total.embeddingCostUsd).toBeCloseTo(byTier.reduce((n, r) => n + r.embeddingCostUsd, 0), 10);
  });
  it("a delayed row that holds only embedding calls counts its job under the embedding model and the standard tier, not its chat call's model and tier", async () => {
    const runs = createRunStore({ pool, embeddingModel: 'gemini-embedding-001' });
    const orgId = randomOrg();
    const at = new Date('2031-07-01T10:00:00Z');
    const embedding = { embeddingTokens: 40, embeddingCostUsd: 0.000006, embeddingEstimated: true };
    // A batch-tier job delayed after its semantic-cache lookup, its re-run not yet made; a job of the model that ran.
    const delayed = { state: 'delayed' as const, part: randomUUID(), tier: 'batch' as const, inputTokens: 0, outputTokens: 0, costUsd: 0, standardCostUsd: 0 };
    await runs.record(run({ orgId, createdAt: at, ...delayed, ...embedding }));
    await runs.record(run({ orgId, createdAt: at }));
    const window = { orgId, from: new Date('2031-07-01T00:00:00Z'), to: new Date('2031-07-02T00:00:00Z') };
    const byModel = await runs.usage({ ...window, groupBy: 'model' });
    expect(byModel.map((r) => [r.key, r.jobs, r.inputTokens, r.embeddingTokens])).toEqual([
      ['gemini-2.5-flash', 1, 100, 0],
      ['gemini-embedding-001', 1, 0, 40],
    ]);
    const byTier = await runs.usage({ ...window, groupBy: 'tier' });
    expect(byTier.map((r) => [r.key, r.jobs, r.inputTokens, r.embeddingTokens])).toEqual([['standard', 2, 100, 40]]);
    // Still no attempt: the standard tier's duration and cache hit rate are the other job's attempt's.
    expect(byTier[0]).toMatchObject({ cacheHitRate: 0, p50Ms: 100, p95Ms: 100 });
    const [total] = await runs.usage({ ...window, groupBy: 'total' });
    expect(total).toMatchObject({ jobs: 2, embeddingTokens: 40 });
  });

  it("groupBy=model splits an attempt's embedding calls by the embedding model its row names, not the one configured now; a row that names none falls back to it", async () => {
    // Configured now: a newer model than the one the first job embedded with.
    const runs = createRunStore({ pool, embeddingModel: 'gemini-embedding-002' });
    const orgId = randomOrg();
    const at = new Date('2031-08-01T10:00:00Z');
    const embedding = { embeddingTokens: 40, embeddingCostUsd: 0.000006, embeddingEstimated: true };
    await runs.record(run({ orgId, createdAt: at, ...embedding, embeddingModel: 'gemini-embedding-001' }));
    await runs.recordMany([run({ orgId, createdAt: at, state: 'delayed', part: randomUUID(), inputTokens: 0, outputTokens: 0, costUsd: 0, ...embedding, embeddingModel: 'gemini-embedding-001' })]);
    // Written before migration 028: no model named.
    await runs.record(run({ orgId, createdAt: at, ...embedding }));
    const window = { orgId, from: new Date('2031-08-01T00:00:00Z'), to: new Date('2031-08-02T00:00:00Z') };
    const byModel = await runs.usage({ ...window, groupBy: 'model' });
    expect(byModel.map((r) => [r.key, r.jobs, r.embeddingTokens])).toEqual([
      ['gemini-2.5-flash', 2, 0],
      ['gemini-embedding-001', 1, 80],
      ['gemini-embedding-002', 0, 40],
    ]);
    const { rows } = await pool.query('SELECT embedding_model FROM agent_runs WHERE org_id = $1 ORDER BY embedding_model', [orgId]);
    expect(rows.map((r) => r.embedding_model)).toEqual(['gemini-embedding-001', 'gemini-embedding-001', null]);
  });

  it("a batch-read run's standard:<n> row that holds only its embedding calls counts its job under the embedding model, as an embedding-only delayed row does", async () => {
    const runs = createRunStore({ pool, embeddingModel: 'gemini-embedding-001' });
    const orgId = randomOrg();
    const at = new Date('2031-09-01T10:00:00Z');
    const jobId = randomUUID();
    const embedding = { embeddingTokens: 40, embeddingCostUsd: 0.000006, embeddingEstimated: true };
    // The batch answer's row, then the run's own embedding calls (no model call after the answer: model columns 0).
    await runs.record(run({ orgId, jobId, createdAt: at, tier: 'batch', costUsd: 0.0005, standardCostUsd: 0.001 }));
    const calls = { inputTokens: 0, outputTokens: 0, costUsd: 0, standardCostUsd: 0, durationMs: 0 };
    await runs.record(run({ orgId, jobId, createdAt: at, part: afterBatchPart(0), tier: 'standard', ...calls, ...embedding }));
    const window = { orgId, from: new Date('2031-09-01T00:00:00Z'), to: new Date('2031-09-02T00:00:00Z') };
    const byModel = await runs.usage({ ...window, groupBy: 'model' });
    expect(byModel.map((r) => [r.key, r.jobs, r.inputTokens, r.embeddingTokens])).toEqual([
      ['gemini-2.5-flash', 1, 100, 0],
      ['gemini-embedding-001', 1, 0, 40],
    ]);
    const byTier = await runs.usage({ ...window, groupBy: 'tier' });
    expect(byTier.map((r) => [r.key, r.jobs, r.inputTokens, r.embeddingTokens])).toEqual([
      ['batch', 1, 100, 0],
      ['standard', 1, 0, 40],
    ]);
    // The batch tier's attempt figures are the answer's row's alone.
    expect(byTier[0]).toMatchObject({ cacheHitRate: 0, p50Ms: 100 });
    expect(byTier[1]).toMatchObject({ p50Ms: 0 });
  });

  it('migration 029: a row is keyed by (job_id, job_ts, attempt, part), its unique key and replica identity, and has no id column; a key written twice is one row', async () => {
    const columns = (await pool.query("SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = 'agent_runs'")).rows.map((r) => r.column_name);
    expect(columns).toEqual(expect.arrayContaining(['job_id', 'job_ts', 'attempt', 'part']));
    expect(columns).not.toContain('id');
    const keys = await pool.query("SELECT contype, pg_get_constraintdef(oid) AS def FROM pg_constraint WHERE conrelid = 'agent_runs'::regclass AND contype IN ('p', 'u')");
    expect(keys.rows).toEqual([{ contype: 'u', def: 'UNIQUE (job_id, job_ts, attempt, part)' }]);
    expect((await pool.query("SELECT to_regclass('agent_runs_id_seq') AS s")).rows[0].s).toBeNull();
    const identity = await pool.query("SELECT c.relreplident, i.indexrelid::regclass::text AS idx FROM pg_class c JOIN pg_index i ON i.indrelid = c.oid AND i.indisreplident WHERE c.oid = 'agent_runs'::regclass");
    expect(identity.rows).toEqual([{ relreplident: 'i', idx: 'agent_runs_job_attempt_part_key' }]);

    const runs = createRunStore({ pool });
    const orgId = randomOrg();
    const jobId = randomUUID();
    const row = run({ orgId, jobId, jobTs: 1765100000000, attempt: 2, state: 'delayed', part: 'p-1' });
    expect(await runs.record(row)).toBe(true);
    expect(await runs.record({ ...row, costUsd: 9 })).toBe(false);
    expect(await runs.recordMany([{ ...row, costUsd: 9 }, { ...row, part: 'p-2' }])).toBe(1);
    // Without ON CONFLICT the key refuses it.
    const again = pool.query("INSERT INTO agent_runs (job_id, job_ts, attempt, part, org_id, agent, action, model, state) VALUES ($1, 1765100000000, 2, 'p-1', $2, 'a', 'b', 'm', 'delayed')", [jobId, orgId]);
    await expect(again).rejects.toMatchObject({ code: '23505' });
    const { rows } = await pool.query('SELECT part, cost_usd FROM agent_runs WHERE job_id = $1 ORDER BY part', [jobId]);
    expect(rows.map((r) => [r.part, Number(r.cost_usd)])).toEqual([
      ['p-1', 0.001],
      ['p-2', 0.001],
    ]);
  });

  it('migration 029 on a table with rows: they are kept as they were, neither the table nor the key\'s index is rebuilt, id and its sequence are gone', async () => {
    // The agent_runs migrations replayed in a schema of their own, in a transaction rolled back at the end.
    const files = readdirSync(MIGRATIONS_DIR).filter((f) => f.endsWith('.sql') && readFileSync(join(MIGRATIONS_DIR, f), 'utf8').includes('agent_runs')).sort();
    expect(files.at(-1)).toBe('029_agent_runs_drop_id.sql');
    const sql = (f: string) => readFileSync(join(MIGRATIONS_DIR, f), 'utf8');
    const schema = `m029_${randomUUID().slice(0, 8)}`;
    const client = await pool.connect();
    try {
      await client.query('BEGIN');
      await client.query(`CREATE SCHEMA ${schema}`);
      await client.query(`SET LOCAL search_path = ${schema}, public`);
      for (const f of files.slice(0, -1)) await client.query(sql(f));
      await client.query(`INSERT INTO agent_runs (job_id, job_ts, attempt, part, org_id, agent, action, model, state, cost_usd)
        VALUES ('j1', 5, 1, '', 'o', 'a', 'b', 'm', 'completed', 0.5), ('j1', 5, 2, 'd-1', 'o', 'a', 'b', 'm', 'delayed', 0.25), ('j2', 0, 1, '', 'o', 'a', 'b', 'm', 'failed', 0)`);
      // The table's file and the key's index file: the same after 029 (no rewrite, no index build under its lock).
      const fileNodes = async () => (await client.query("SELECT relname, relfilenode FROM pg_class WHERE oid IN ('agent_runs'::regclass, 'agent_runs_job_attempt_part_key'::regclass) ORDER BY relname")).rows;
      const before = await fileNodes();
      expect(before).toHaveLength(2);
      await client.query(sql(files.at(-1)!));
      expect(await fileNodes()).toEqual(before);
      const { rows } = await client.query('SELECT * FROM agent_runs ORDER BY job_id, attempt');
      expect(rows.map((r) => [r.job_id, Number(r.job_ts), r.attempt, r.part, r.state, Number(r.cost_usd)])).toEqual([
        ['j1', 5, 1, '', 'completed', 0.5],
        ['j1', 5, 2, 'd-1', 'delayed', 0.25],
        ['j2', 0, 1, '', 'failed', 0],
      ]);
      expect(rows[0]).not.toHaveProperty('id');
      expect((await client.query(`SELECT to_regclass('${schema}.agent_runs_id_seq') AS s`)).rows[0].s).toBeNull();
      const keys = await client.query("SELECT contype, pg_get_constraintdef(oid) AS def FROM pg_constraint WHERE conrelid = 'agent_runs'::regclass AND contype IN ('p', 'u')");
      expect(keys.rows).toEqual([{ contype: 'u', def: 'UNIQUE (job_id, job_ts, attempt, part)' }]);
      const dup = await client.query("INSERT INTO agent_runs (job_id, job_ts, attempt, part, org_id, agent, action, model, state) VALUES ('j1', 5, 1, '', 'o', 'a', 'b', 'm', 'completed') ON CONFLICT (job_id, job_ts, attempt, part) DO NOTHING");
      expect(dup.rowCount).toBe(0);
    } finally {
      await client.query('ROLLBACK');
      client.release();
    }
  });
});

describe('quotas', () => {
  let pool: pg.Pool;
  beforeAll(async () => {
    pool = createPool(databaseUrl(), { max: 2 });
    await migrate(pool);
  });
  afterAll(() => pool.end());

  it('always allows an org without limits, and an org with no row at all', async () => {
    const quotas = createQuotaChecker({ pool });
    const runs = createRunStore({ pool });
    const orgId = randomOrg();
    await createOrgStore({ pool }).upsert({ id: orgId });
    for (let i = 0; i < 3; i++) await runs.record(run({ orgId, costUsd: 100, jobTs: Date.now() }));
    expect(await quotas.check(orgId)).toEqual({ allowed: true });
    expect(await quotas.check(randomOrg())).toEqual({ allowed: true });
    expect(await quotas.read(orgId, utcDayOf(Date.now()).startMs)).toEqual({ budget: { allowed: true } });
  });

  it('reads the daily job limit with the jobs made that UTC day that have a row: a job once however many attempts, never one made the day before', async () => {
    const quotas = createQuotaChecker({ pool });
    const runs = createRunStore({ pool });
    const orgId = randomOrg();
    await createOrgStore({ pool }).upsert({ id: orgId, dailyJobLimit: 2 });
    const today = utcDayOf(Date.now()).startMs;
    const yesterday = new Date(Date.now() - 48 * 3600_000);
    await runs.record(run({ orgId, createdAt: yesterday, jobTs: yesterday.getTime() }));
    // Made yesterday, run (or retried) today: not a job of today.
    await runs.record(run({ orgId, jobTs: today - 1000 }));
    const job = randomUUID();
    const jobTs = Date.now();
    await runs.record(run({ orgId, jobId: job, jobTs, attempt: 1, state: 'failed' }));
    await runs.record(run({ orgId, jobId: job, jobTs, attempt: 2 }));
    // One job made today, in two attempts.
    expect((await quotas.read(orgId, today)).daily).toEqual({ limit: 2, recorded: 1, dayStartMs: today });
    // The worker's check is the budget alone: the daily limit is admission's (reserved there as jobs enter).
    await runs.record(run({ orgId, jobTs: Date.now() }));
    expect(await quotas.check(orgId)).toEqual({ allowed: true });
    expect((await quotas.read(orgId, today)).daily?.recorded).toBe(2);
  });

  it("reads the UTC day's jobs and counts down to the next UTC month whatever the session's TimeZone", async () => {
    const runs = createRunStore({ pool });
    const dayOrg = randomOrg();
    const monthOrg = randomOrg();
    await createOrgStore({ pool }).upsert({ id: dayOrg, dailyJobLimit: 1 });
    await createOrgStore({ pool }).upsert({ id: monthOrg, monthlyBudgetUsd: 0.0001 });
    await runs.record(run({ orgId: dayOrg, jobTs: Date.now() }));
    await runs.record(run({ orgId: monthOrg, costUsd: 1 }));
    // A server whose timezone is the host's: SET LOCAL inside a transaction of one client (the embedded
    // database is one session shared by every connection: a plain SET would reach other tests' queries).
    const client = await pool.connect();
    try {
      await client.query('BEGIN');
      await client.query("SET LOCAL TIME ZONE 'America/Los_Angeles'");
      const quotas = createQuotaChecker({ pool: { query: client.query.bind(client) } as unknown as pg.Pool });
      const now = new Date();
      const today = utcDayOf(now.getTime()).startMs;
      const day = await quotas.read(dayOrg, today);
      const month = await quotas.check(monthOrg);
      const nextMonth = Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1);
      expect(day.daily).toEqual({ limit: 1, recorded: 1, dayStartMs: today });
      expect(month).toMatchObject({ allowed: false, reason: expect.stringContaining('monthly budget') });
      expect(month.allowed === false && Math.abs(month.retryAfterS - (nextMonth - now.getTime()) / 1000)).toBeLessThan(120);
    } finally {
      await client.query('ROLLBACK');
      client.release();
    }
  });

  it('counts the estimated cost of embedding calls (an attempt\'s, an ingest\'s) against the monthly budget: an org whose model calls cost nothing yet is refused', async () => {
    const quotas = createQuotaChecker({ pool });
    const runs = createRunStore({ pool });
    const orgId = randomOrg();
    await createOrgStore({ pool }).upsert({ id: orgId, monthlyBudgetUsd: 1 });
    // An attempt served from a cache: no model call billed, only its embedding calls (estimated, migration 023).
    await runs.record(run({ orgId, costUsd: 0, inputTokens: 0, outputTokens: 0, cacheHit: 'semantic', embeddingTokens: 1000, embeddingCostUsd: 0.6, embeddingEstimated: true }));
    expect(await quotas.check(orgId)).toEqual({ allowed: true });
    // The org's knowledge ingestion (migration 024): priced here so that it takes the budget's last 0.4.
    const store = createKnowledgeStore({ pool, embed: createHashEmbed(), ledger: { model: 'gemini-embedding-001', costUsd: () => 0.4 } });
    await store.upsert('chat_facts', [{ external_id: 'f1', content: 'Burn multiple is 1.4 this quarter' }], { orgId });
    const { rows } = await pool.query('SELECT sum(cost_usd) AS billed FROM agent_runs WHERE org_id = $1', [orgId]);
    expect(Number(rows[0].billed)).toBe(0);
    expect(await quotas.check(orgId)).toMatchObject({ allowed: false, reason: expect.stringContaining('monthly budget') });
  });

  it('refuses once this month\'s spend reaches the budget, until the first of next month', async () => {
    const quotas = createQuotaChecker({ pool });
    const runs = createRunStore({ pool });
    const orgId = randomOrg();
    await createOrgStore({ pool }).upsert({ id: orgId, monthlyBudgetUsd: 1 });
    const now = new Date();
    const lastMonth = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - 1, 15));
    await runs.record(run({ orgId, costUsd: 5, createdAt: lastMonth }));
    await runs.record(run({ orgId, costUsd: 0.6 }));
    expect(await quotas.check(orgId)).toEqual({ allowed: true });
    await runs.record(run({ orgId, state: 'failed', costUsd: 0.4 }));
    const refused = await quotas.check(orgId);
    expect(refused).toMatchObject({ allowed: false, reason: expect.stringContaining('monthly budget') });
    const nextMonth = Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1);
    expect(refused.allowed === false && Math.abs(refused.retryAfterS - (nextMonth - now.getTime()) / 1000)).toBeLessThan(120);
  });
});
