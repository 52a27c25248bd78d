import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRunStore, type AgentRun } from '../src/shared/infra/db/agent-runs.js';
import { migrate } from '../src/shared/infra/db/migrate.js';
import { createPool } from '../src/shared/infra/db/pool.js';
import { createRunWriter } from '../src/shared/infra/db/run-writer.js';
import { databaseUrl, randomOrg } from './helpers/env.js';

const pool = createPool(databaseUrl(), { max: 4 });
const run = (orgId: string, jobId: string, attempt = 1): AgentRun => ({
  jobId,
  attempt,
  orgId,
  agent: 'RiskAnalyzer',
  action: 'analyze_risks',
  model: 'gemini-2.5-pro',
  state: 'completed',
  inputTokens: 10,
  outputTokens: 20,
  costUsd: 0.0001,
  durationMs: 5,
});

describe('agent_runs group commit', () => {
  beforeAll(() => migrate(pool));
  afterAll(() => pool.end());

  it('commits 200 concurrent attempts in far fewer INSERTs, each promise resolving once its row is stored', async () => {
    const store = createRunStore({ pool });
    let inserts = 0;
    const writer = createRunWriter({ recordMany: (rows) => (inserts++, store.recordMany(rows)) });
    const org = randomOrg();
    const ids = Array.from({ length: 200 }, () => randomUUID());
    await Promise.all(ids.map((id) => writer.record(run(org, id))));
    const { rows } = await pool.query('SELECT count(*)::int AS n FROM agent_runs WHERE org_id = $1', [org]);
    expect(rows[0].n).toBe(200);
    expect(inserts).toBeGreaterThan(0);
    expect(inserts).toBeLessThan(20);
  });

  it('stays idempotent per (job, attempt) and stores every field', async () => {
    const store = createRunStore({ pool });
    const writer = createRunWriter(store);
    const org = randomOrg();
    const id = randomUUID();
    await Promise.all([writer.record(run(org, id)), writer.record(run(org, id)), writer.record({ ...run(org, id, 2), state: 'failed', error: 'boom', cacheHit: 'l2' })]);
    const { rows } = await pool.query('SELECT attempt, state, error, cache_hit, input_tokens, cost_usd FROM agent_runs WHERE job_id = $1 ORDER BY attempt', [id]);
    expect(rows).toEqual([
      { attempt: 1, state: 'completed', error: null, cache_hit: null, input_tokens: 10, cost_usd: '0.00010000' },
      { attempt: 2, state: 'failed', error: 'boom', cache_hit: 'l2', input_tokens: 10, cost_usd: '0.00010000' },
    ]);
  });

  it('rejects the callers of a batch that failed, and keeps going for later ones', async () => {
    let fail = true;
    const writer = createRunWriter({
      recordMany: async () => {
        if (fail) throw new Error('db down');
        return 1;
      },
    });
    await expect(writer.record(run('o', 'a'))).rejects.toThrow('db down');
    fail = false;
    await expect(writer.record(run('o', 'b'))).resolves.toBeUndefined();
  });
});
