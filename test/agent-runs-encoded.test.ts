import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRunStore, type AgentRun } from '../src/shared/infra/db/agent-runs.js';
import { migrate } from '../src/shared/infra/db/migrate.js';
import { storableText } from '../src/shared/infra/db/pg-content.js';
import { createPool } from '../src/shared/infra/db/pool.js';
import { decodeRun, encodeRun } from '../src/shared/infra/db/run-stream.js';
import { databaseUrl, randomOrg } from './helpers/env.js';

/**
 * The statement the usage sink wrote its batches with until 2026-12-07: the rows decoded from their stream JSON,
 * sent as 25 arrays. The rows as JSON (`recordEncoded`) must be stored exactly as it stored them.
 */
const ARRAYS_INSERT = `INSERT INTO agent_runs (job_id, attempt, org_id, agent, action, model, state, input_tokens, output_tokens,
                                 cost_usd, duration_ms, cache_hit, error, request_id, created_at,
                                 tier, cached_tokens, thoughts_tokens, standard_cost_usd, job_ts, part,
                                 embedding_tokens, embedding_cost_usd, embedding_estimated, embedding_model)
   SELECT j, a, o, ag, ac, m, st, it, ot, c, d, ch, e, rq, COALESCE(ca, now()), ti, ct, tt, sc, jt, pt, et, ec, ee, em
   FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::int[],
               $9::int[], $10::numeric[], $11::int[], $12::text[], $13::text[], $14::text[], $15::timestamptz[],
               $16::text[], $17::int[], $18::int[], $19::numeric[], $20::bigint[], $21::text[],
               $22::int[], $23::numeric[], $24::boolean[], $25::text[])
        AS t(j, a, o, ag, ac, m, st, it, ot, c, d, ch, e, rq, ca, ti, ct, tt, sc, jt, pt, et, ec, ee, em)
   ON CONFLICT (job_id, job_ts, attempt, part) DO NOTHING`;

function arraysParams(runs: AgentRun[]): unknown[] {
  const col = <T>(f: (r: AgentRun) => T) => runs.map(f);
  return [
    col((r) => r.jobId),
    col((r) => r.attempt),
    col((r) => r.orgId),
    col((r) => r.agent),
    col((r) => r.action),
    col((r) => r.model),
    col((r) => r.state),
    col((r) => Math.round(r.inputTokens)),
    col((r) => Math.round(r.outputTokens)),
    col((r) => r.costUsd),
    col((r) => Math.round(r.durationMs)),
    col((r) => r.cacheHit ?? null),
    col((r) => storableText(r.error)),
    col((r) => storableText(r.requestId)),
    col((r) => r.createdAt ?? null),
    col((r) => r.tier ?? 'standard'),
    col((r) => Math.round(r.cachedTokens ?? 0)),
    col((r) => Math.round(r.thoughtsTokens ?? 0)),
    col((r) => r.standardCostUsd ?? r.costUsd),
    col((r) => Math.round(r.jobTs ?? 0)),
    col((r) => r.part ?? ''),
    col((r) => Math.round(r.embeddingTokens ?? 0)),
    col((r) => r.embeddingCostUsd ?? 0),
    col((r) => r.embeddingEstimated ?? false),
    col((r) => r.embeddingModel ?? null),
  ];
}

/** Every column but the serial id and the job id (each path writes its own job ids), as text: nothing lost to a JS number. */
const stored = async (pool: pg.Pool, jobIds: string[]) =>
  (
    await pool.query<Record<string, string | null>>(
      `SELECT attempt::text, org_id, agent, action, model, state, input_tokens::text, output_tokens::text, cost_usd::text,
              duration_ms::text, cache_hit, error, request_id, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') AS created_at,
              tier, cached_tokens::text, thoughts_tokens::text, standard_cost_usd::text, job_ts::text, part, embedding_tokens::text,
              embedding_cost_usd::text, embedding_estimated::text, embedding_model, kind
       FROM agent_runs WHERE job_id = ANY($1) ORDER BY array_position($1, job_id)`,
      [jobIds],
    )
  ).rows;

describe('agent_runs rows sent as their JSON (the usage sink)', () => {
  let pool: pg.Pool;
  beforeAll(async () => {
    pool = createPool(databaseUrl(), { max: 2 });
    await migrate(pool);
  });
  afterAll(() => pool.end());

  it('stores exactly what the rows decoded and sent as arrays stored: every column set, nulls and absent fields, fractions, NUL, lone surrogates, control characters', async () => {
    const orgId = randomOrg();
    const at = new Date('2031-03-04T05:06:07.891Z');
    const rows: Array<Omit<AgentRun, 'jobId'>> = [
      // Every column set.
      {
        jobTs: 1765100000123, attempt: 3, part: 'delayed-part-1', orgId, agent: 'RiskAnalyzer', action: 'analyze_risks', model: 'gemini-2.5-pro',
        state: 'delayed', inputTokens: 1234, outputTokens: 567, costUsd: 0.00123456, durationMs: 8901, cacheHit: 'semantic', error: 'quota "x" \\ o\'k é 漢字 🎉',
        requestId: 'req-1', tier: 'batch', cachedTokens: 89, thoughtsTokens: 12, standardCostUsd: 0.00246912, embeddingTokens: 42,
        embeddingCostUsd: 0.0000063, embeddingEstimated: true, embeddingModel: 'gemini-embedding-001', createdAt: at,
      },
      // Nulls, and every optional field absent (created_at: the stream's row carries the attempt's end, stamped by encodeRun).
      { attempt: 1, orgId, agent: 'a', action: 'b', model: 'm', state: 'completed', inputTokens: 0, outputTokens: 0, costUsd: 0, durationMs: 0, cacheHit: null, error: null, requestId: null },
      // Fractions (rounded as Math.round: half up, 2.5 -> 3, -2.5 -> -2), a tiny and a long cost, NaN (null in JSON: 0).
      { attempt: 1, orgId, agent: 'a', action: 'b', model: 'm', state: 'failed', inputTokens: 12.5, outputTokens: 0.49999999999999994, costUsd: 1e-7, durationMs: -2.5, cachedTokens: 2.4999, thoughtsTokens: 7.5, jobTs: 1765100000000.5, embeddingTokens: 0.5, standardCostUsd: 0.123456789, embeddingCostUsd: 1.5e-8, error: 'x' },
      // created_at null: encodeRun stamps it after the null (the key twice: the last one counts, as JSON.parse takes it).
      { attempt: 1, orgId, agent: 'a', action: 'b', model: 'm', state: 'completed', inputTokens: 1, outputTokens: 1, costUsd: 0, durationMs: 1, createdAt: null as unknown as Date },
      { attempt: 1, orgId, agent: 'a', action: 'b', model: 'm', state: 'failed', inputTokens: Number.NaN, outputTokens: 1, costUsd: 0.5, durationMs: 1, cachedTokens: Number.NaN, error: 'nan' },
      // A NUL in the error and request id (U+FFFD), lone surrogates anywhere (U+FFFD), control characters and a literal backslash-u.
      { attempt: 2, orgId, agent: 'ag\uD800ent', action: 'b', model: 'm', state: 'failed', inputTokens: 1, outputTokens: 1, costUsd: 0, durationMs: 1, error: 'bad\u0000byte \uDC00 \u0001\u001f\t\n \\u0000 done', requestId: 'r\u0000q' },
    ];
    const tag = randomUUID().slice(0, 8);
    const named = (path: string) => rows.map((r, i) => ({ ...r, jobId: `${tag}-${path}-${i}` }) as AgentRun);
    // The stream's entries: the rows as the worker appends them (encoded once: the stamped created_at is the same for both paths).
    const encoded = named('path').map(encodeRun);
    const entries = (path: string) => encoded.map((json) => json.replace(`"${tag}-path-`, `"${tag}-${path}-`));
    const before = entries('arrays');
    await pool.query(ARRAYS_INSERT, arraysParams(before.map(decodeRun)));
    const runs = createRunStore({ pool });
    const now = entries('json');
    expect(await runs.recordEncoded(now)).toBe(rows.length);
    // Sent again (a redelivered batch): nothing new, as before.
    expect(await runs.recordEncoded(now)).toBe(0);
    const old = await stored(pool, named('arrays').map((r) => r.jobId));
    expect(old).toHaveLength(rows.length);
    expect(await stored(pool, named('json').map((r) => r.jobId))).toEqual(old);
    // And the values themselves, for the row with every column and the rounded one.
    expect(old[0]).toMatchObject({ attempt: '3', input_tokens: '1234', cost_usd: '0.00123456', cache_hit: 'semantic', error: 'quota "x" \\ o\'k é 漢字 🎉', created_at: '2031-03-04 05:06:07.891000', tier: 'batch', job_ts: '1765100000123', part: 'delayed-part-1', embedding_estimated: 'true', embedding_model: 'gemini-embedding-001', standard_cost_usd: '0.00246912' });
    expect(old[1]).toMatchObject({ cache_hit: null, error: null, request_id: null, tier: 'standard', cached_tokens: '0', standard_cost_usd: '0.00000000', job_ts: '0', part: '', embedding_tokens: '0', embedding_estimated: 'false', embedding_model: null });
    expect(old[2]).toMatchObject({ input_tokens: '13', output_tokens: '0', duration_ms: '-2', cached_tokens: '2', thoughts_tokens: '8', job_ts: '1765100000001', embedding_tokens: '1', cost_usd: '0.00000010', standard_cost_usd: '0.12345679' });
    expect(old[4]).toMatchObject({ input_tokens: '0', cached_tokens: '0' });
    expect(old[5]).toMatchObject({ agent: 'ag\uFFFDent', error: 'bad\uFFFDbyte \uFFFD \u0001\u001f\t\n \\u0000 done', request_id: 'r\uFFFDq' });
  });

  it("a row's fields that hold their column's default are left out of its JSON and stored as the row sent whole stores them; any other value is kept", async () => {
    const orgId = randomOrg();
    const at = new Date('2031-05-06T07:08:09.123Z');
    const tag = randomUUID().slice(0, 8);
    const common = { attempt: 1, orgId, agent: 'RiskAnalyzer', action: 'analyze_risks', model: 'gemini-2.5-flash', createdAt: at };
    // Every field that has a default, at it (a cache hit's row, whole).
    const defaults = {
      inputTokens: 0, outputTokens: 0, durationMs: 0, jobTs: 0, part: '', cacheHit: null, error: null, requestId: null, tier: 'standard' as const,
      cachedTokens: 0, thoughtsTokens: 0, standardCostUsd: null, embeddingTokens: 0, embeddingCostUsd: 0, embeddingEstimated: false, embeddingModel: null as unknown as string,
    };
    const rows: Array<Omit<AgentRun, 'jobId'>> = [
      { ...common, state: 'completed', costUsd: 0, ...defaults },
      // standardCostUsd equal to costUsd (its default), at a cost that is no round number.
      { ...common, state: 'completed', costUsd: 0.00081225, ...defaults, standardCostUsd: 0.00081225, inputTokens: 812, outputTokens: 230, durationMs: 44 },
      // Each field one step off its default: kept.
      {
        ...common, state: 'delayed', part: 'd-1', jobTs: 1, inputTokens: 1, outputTokens: 1, durationMs: 1, costUsd: 0, cacheHit: 'l1', error: '', requestId: '',
        tier: 'flex', cachedTokens: 1, thoughtsTokens: 1, standardCostUsd: 0.000001, embeddingTokens: 1, embeddingCostUsd: 1e-8, embeddingEstimated: true, embeddingModel: '',
      },
      { ...common, state: 'failed', costUsd: 0.5, ...defaults, standardCostUsd: 0, part: 'stalled:1', tier: 'priority', error: 'x' },
    ];
    const named = (path: string) => rows.map((r, i) => ({ ...r, jobId: `${tag}-${path}-${i}` }) as AgentRun);
    const json = named('json').map(encodeRun);
    expect(Object.keys(JSON.parse(json[0])).sort()).toEqual(['action', 'agent', 'attempt', 'costUsd', 'createdAt', 'durationMs', 'inputTokens', 'jobId', 'model', 'orgId', 'outputTokens', 'state']);
    expect(JSON.parse(json[1])).not.toHaveProperty('standardCostUsd');
    expect(Object.keys(JSON.parse(json[2])).length).toBe(Object.keys(rows[2]).length + 1);
    expect(JSON.parse(json[3])).toMatchObject({ standardCostUsd: 0, part: 'stalled:1', tier: 'priority', error: 'x' });
    // The same rows through `record` (each field sent as a parameter, its default applied in JS) and through their JSON.
    const runs = createRunStore({ pool });
    for (const r of named('record')) expect(await runs.record(r)).toBe(true);
    expect(await runs.recordEncoded(json)).toBe(rows.length);
    const whole = await stored(pool, named('record').map((r) => r.jobId));
    expect(whole).toHaveLength(rows.length);
    expect(await stored(pool, named('json').map((r) => r.jobId))).toEqual(whole);
    expect(whole[0]).toMatchObject({ tier: 'standard', cache_hit: null, error: null, standard_cost_usd: '0.00000000', part: '', job_ts: '0', embedding_estimated: 'false', embedding_model: null, created_at: '2031-05-06 07:08:09.123000' });
    expect(whole[1]).toMatchObject({ standard_cost_usd: '0.00081225', input_tokens: '812' });
    expect(whole[2]).toMatchObject({ cache_hit: 'l1', error: '', request_id: '', tier: 'flex', embedding_model: '', embedding_estimated: 'true', job_ts: '1' });
    expect(whole[3]).toMatchObject({ standard_cost_usd: '0.00000000', cost_usd: '0.50000000' });
  });

  it("recordMany (rows as objects) stores what the stream's JSON of the same rows stores; created_at defaults to the insert's now()", async () => {
    const orgId = randomOrg();
    const runs = createRunStore({ pool });
    const base = { attempt: 1, orgId, agent: 'a', action: 'b', model: 'm', state: 'completed' as const, inputTokens: 5, outputTokens: 6, costUsd: 0.25, durationMs: 7 };
    const tag = randomUUID().slice(0, 8);
    const started = (await pool.query<{ t: Date }>('SELECT now() AS t')).rows[0].t;
    expect(await runs.recordMany([{ ...base, jobId: `${tag}-a` }, { ...base, jobId: `${tag}-b`, createdAt: new Date('2030-01-01T00:00:00Z'), tier: 'flex' }])).toBe(2);
    const { rows } = await pool.query('SELECT job_id, created_at, tier, input_tokens FROM agent_runs WHERE job_id LIKE $1 ORDER BY job_id', [`${tag}-%`]);
    expect(rows.map((r) => [r.job_id, r.tier, r.input_tokens])).toEqual([
      [`${tag}-a`, 'standard', 5],
      [`${tag}-b`, 'flex', 5],
    ]);
    expect(new Date(rows[0].created_at).getTime()).toBeGreaterThanOrEqual(new Date(started).getTime());
    expect(new Date(rows[1].created_at).toISOString()).toBe('2030-01-01T00:00:00.000Z');
  });
});
