import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { migrate } from '../src/shared/infra/db/migrate.js';
import { createPool } from '../src/shared/infra/db/pool.js';
import { ValidationError } from '../src/shared/core/errors.js';
import { createIngestLedger, createKnowledgeStore } from '../src/shared/knowledge/knowledge-store.js';
import { createRunStore } from '../src/shared/infra/db/agent-runs.js';
import { createVectorSearch } from '../src/shared/knowledge/vector-search.js';
import { createHashEmbed } from './helpers/hash-embed.js';
import { databaseUrl, randomOrg } from './helpers/env.js';

// Shared tables: every external id and every document carries this file's tag word.
const tag = `kq${randomUUID().slice(0, 6).replace(/[^a-z]/g, 'x')}`;

describe('knowledge store and vector search', () => {
  let pool: pg.Pool;
  beforeAll(async () => {
    pool = createPool(databaseUrl(), { max: 3 });
    await migrate(pool);
  });
  afterAll(() => pool.end());

  const countExt = async (table: string, prefix: string) =>
    Number((await pool.query(`SELECT count(*) AS n FROM ${table} WHERE external_id LIKE $1`, [`${prefix}%`])).rows[0].n);

  it('upserts by external id in batches: re-ingesting updates instead of duplicating', async () => {
    const embed = createHashEmbed();
    const store = createKnowledgeStore({ pool, embed });
    const prefix = `${tag}-up-`;
    const docs = Array.from({ length: 5 }, (_, i) => ({ external_id: `${prefix}${i}`, industry: 'saas', display_name: `${tag} pack ${i}`, description: 'v1' }));
    const progress: number[] = [];
    const first = await store.upsert('industry_packs', docs, { batchSize: 2, onProgress: (p) => progress.push(p.done) });
    expect(first).toEqual({ inserted: 5, updated: 0, skipped: 0, total: 5 });
    expect(embed.calls).toBe(3);
    expect(progress).toEqual([2, 4, 5]);

    const again = await store.upsert('industry_packs', [...docs.slice(0, 4).map((d) => ({ ...d, description: 'v2' })), { ...docs[0], external_id: `${prefix}5` }]);
    expect(again).toEqual({ inserted: 1, updated: 4, skipped: 0, total: 5 });
    expect(await countExt('industry_packs', prefix)).toBe(6);
    const { rows } = await pool.query('SELECT description FROM industry_packs WHERE external_id = $1', [`${prefix}0`]);
    expect(rows[0].description).toBe('v2');
  });

  it('keys chat facts by (org, external id), so two orgs never overwrite each other', async () => {
    const store = createKnowledgeStore({ pool, embed: createHashEmbed() });
    const ext = `${tag}-fact`;
    const [a, b] = [randomOrg(), randomOrg()];
    await store.upsert('chat_facts', [{ external_id: ext, content: `${tag} burn rate is 50k`, startup_id: 's1', confidence: 0.9 }], { orgId: a });
    await store.upsert('chat_facts', [{ external_id: ext, content: `${tag} burn rate is 80k` }], { orgId: b });
    expect(await store.upsert('chat_facts', [{ external_id: ext, content: `${tag} burn rate is 55k`, startup_id: 's1' }], { orgId: a })).toMatchObject({
      inserted: 0,
      updated: 1,
    });
    const { rows } = await pool.query('SELECT org_id, content FROM chat_facts WHERE external_id = $1 ORDER BY content', [ext]);
    expect(rows).toEqual([
      { org_id: a, content: `${tag} burn rate is 55k` },
      { org_id: b, content: `${tag} burn rate is 80k` },
    ]);
    await expect(store.upsert('chat_facts', [{ external_id: 'x', content: 'y' }])).rejects.toThrow(ValidationError);
  });

  it('keys playbooks by (org, external id): two orgs and the shared rows each own the same id', async () => {
    const store = createKnowledgeStore({ pool, embed: createHashEmbed() });
    const ext = `${tag}-pb`;
    const [a, b] = [randomOrg(), randomOrg()];
    expect(await store.upsert('playbooks', [{ external_id: ext, title: `${tag} A private` }], { orgId: a })).toMatchObject({ inserted: 1, skipped: 0 });
    expect(await store.upsert('playbooks', [{ external_id: ext, title: `${tag} B private` }], { orgId: b })).toMatchObject({ inserted: 1, skipped: 0 });
    expect(await store.upsert('playbooks', [{ external_id: ext, title: `${tag} shared` }])).toMatchObject({ inserted: 1, skipped: 0 });
    // Re-ingesting one's own id updates that row only; the shared rows' ids stay unique among themselves.
    expect(await store.upsert('playbooks', [{ external_id: ext, title: `${tag} B v2` }], { orgId: b })).toMatchObject({ inserted: 0, updated: 1 });
    expect(await store.upsert('playbooks', [{ external_id: ext, title: `${tag} shared v2` }])).toMatchObject({ inserted: 0, updated: 1 });
    const { rows } = await pool.query('SELECT org_id, title FROM playbooks WHERE external_id = $1 ORDER BY title', [ext]);
    expect(rows).toEqual([
      { org_id: a, title: `${tag} A private` },
      { org_id: b, title: `${tag} B v2` },
      { org_id: null, title: `${tag} shared v2` },
    ]);
  });

  it("records an org's ingestion in its ledger: a row per written batch, in the statement that writes it, tokens estimated and flagged, at the embedding price; shared rows nowhere", async () => {
    const runs = createRunStore({ pool });
    const ledger = createIngestLedger('gemini-embedding-001');
    const store = createKnowledgeStore({ pool, embed: createHashEmbed(), ledger });
    const [orgId, other] = [randomOrg(), randomOrg()];
    const docs = Array.from({ length: 5 }, (_, i) => ({ external_id: `${tag}-led-${i}`, content: `${tag} fact number ${i} about net revenue retention`.repeat(i + 1) }));
    expect(await store.upsert('chat_facts', docs, { orgId, batchSize: 2, requestId: 'req-led-1' })).toMatchObject({ inserted: 5 });
    // Gemini reports no usage for embeddings: ~4 characters a token, each batch its own texts.
    const est = (ds: typeof docs) => ds.reduce((n, d) => n + Math.ceil(d.content.length / 4), 0);
    const { rows } = await pool.query(
      'SELECT job_id, job_ts, attempt, agent, action, model, state, kind, input_tokens, cost_usd, embedding_tokens, embedding_cost_usd, embedding_estimated, request_id FROM agent_runs WHERE org_id = $1 ORDER BY attempt',
      [orgId],
    );
    expect(rows.map((r) => [r.attempt, r.embedding_tokens])).toEqual([
      [1, est(docs.slice(0, 2))],
      [2, est(docs.slice(2, 4))],
      [3, est(docs.slice(4))],
    ]);
    // One ingest request: one id for its batches, no job of any day (job_ts 0), no model call billed.
    expect(new Set(rows.map((r) => r.job_id)).size).toBe(1);
    expect(rows[0].job_id).toMatch(/^ingest:[0-9a-f-]{36}$/);
    for (const r of rows) {
      expect(r).toMatchObject({ job_ts: '0', agent: 'knowledge', action: 'ingest:chat_facts', model: 'gemini-embedding-001', state: 'completed', kind: 'ingest', input_tokens: 0, embedding_estimated: true, request_id: 'req-led-1' });
      expect(Number(r.cost_usd)).toBe(0);
      expect(Number(r.embedding_cost_usd)).toBeCloseTo(ledger.costUsd(r.embedding_tokens), 8);
    }
    const window = { from: new Date(Date.now() - 3_600_000), to: new Date(Date.now() + 60_000) };
    const [total] = await runs.usage({ orgId, ...window, groupBy: 'total' });
    // An ingest is no job: it counts in the embedding sums only.
    expect(total).toMatchObject({ jobs: 0, inputTokens: 0, costUsd: 0, embeddingTokens: est(docs), ingestEmbeddingTokens: est(docs), cacheHitRate: 0, p50Ms: 0 });
    expect(total.embeddingCostUsd).toBeCloseTo(ledger.costUsd(est(docs)), 8);
    expect(await runs.usage({ orgId: other, ...window, groupBy: 'total' })).toEqual([]);

    // Shared rows (no org to bill) and packs (shared, whatever the org) record nothing.
    const before = Number((await pool.query("SELECT count(*) AS n FROM agent_runs WHERE kind = 'ingest'")).rows[0].n);
    await store.upsert('playbooks', [{ external_id: `${tag}-led-pb`, title: `${tag} shared playbook` }]);
    await store.upsert('industry_packs', [{ external_id: `${tag}-led-pk`, industry: 'saas', display_name: `${tag} pack`, description: 'd' }], { orgId: other });
    expect(Number((await pool.query("SELECT count(*) AS n FROM agent_runs WHERE kind = 'ingest'")).rows[0].n)).toBe(before);
    expect(await runs.usage({ orgId: other, ...window, groupBy: 'total' })).toEqual([]);
  });

  it('writes a batch and its ledger row together: a row Postgres refuses writes none of the documents', async () => {
    // A cost numeric(12, 8) cannot hold: the ledger's INSERT fails, and with it the batch's.
    const store = createKnowledgeStore({ pool, embed: createHashEmbed(), ledger: { model: 'gemini-embedding-001', costUsd: () => 1e9 } });
    const orgId = randomOrg();
    await expect(store.upsert('chat_facts', [{ external_id: `${tag}-atomic`, content: 'never half written' }], { orgId })).rejects.toMatchObject({ code: '22003' });
    expect(await countExt('chat_facts', `${tag}-atomic`)).toBe(0);
    expect((await pool.query('SELECT count(*) AS n FROM agent_runs WHERE org_id = $1', [orgId])).rows[0].n).toBe('0');
  });

  it('rejects invalid documents before embedding or writing anything, naming index and field', async () => {
    const embed = createHashEmbed();
    const store = createKnowledgeStore({ pool, embed });
    const prefix = `${tag}-bad-`;
    const err = await store
      .upsert(
        'chat_facts',
        [
          { external_id: `${prefix}0`, content: 'fine' },
          { external_id: `${prefix}1`, content: 'conf', confidence: 1.5 },
          { content: 'no id' },
          { external_id: `${prefix}0`, content: 'duplicate' },
          // Postgres stores no NUL in text: refused with the rest, not by the INSERT.
          { external_id: `${prefix}4`, content: 'a\u0000b' },
        ],
        { orgId: randomOrg() },
      )
      .catch((e) => e);
    expect(err).toBeInstanceOf(ValidationError);
    const paths = err.details.map((d: { path: string }) => d.path);
    expect(paths).toEqual(expect.arrayContaining(['1.confidence', '2.external_id', '3.external_id', '4.content']));
    expect(embed.calls).toBe(0);
    expect(await countExt('chat_facts', prefix)).toBe(0);
    await expect(store.upsert('api_keys', [{ external_id: 'x' }])).rejects.toThrow(/unknown table/);
  });

  it('searches the requested tables and merges results best-first, cut to the limit', async () => {
    const embed = createHashEmbed();
    const store = createKnowledgeStore({ pool, embed });
    const orgId = randomOrg();
    const w = `${tag}zz`;
    await store.upsert('industry_packs', [
      { external_id: `${w}-p1`, industry: 'climate', display_name: `${w} carbon capture`, description: 'carbon removal hardware' },
      { external_id: `${w}-p2`, industry: 'food', display_name: `${w} restaurants`, description: 'kitchen software' },
    ]);
    await store.upsert('playbooks', [{ external_id: `${w}-b1`, title: `${w} carbon credits`, description: 'selling carbon credits' }], { orgId });
    await store.upsert(
      'chat_facts',
      [
        { external_id: `${w}-f1`, content: `${w} carbon capture pilot signed`, startup_id: 's1' },
        { external_id: `${w}-f2`, content: `${w} carbon capture pilot delayed`, startup_id: 's2' },
      ],
      { orgId },
    );
    const search = createVectorSearch({ pool, embed });
    const results = (await search.search({ query: `${w} carbon capture pilot signed`, orgId, threshold: 0.2 })).filter((r) => r.content.includes(w));
    expect(new Set(results.map((r) => r.table))).toEqual(new Set(['industry_packs', 'playbooks', 'chat_facts']));
    for (let i = 1; i < results.length; i++) expect(results[i - 1].similarity).toBeGreaterThanOrEqual(results[i].similarity);
    expect(results[0].metadata.external_id).toBe(`${w}-f1`);
    expect(results[0].similarity).toBeCloseTo(1, 5);
    expect(results.every((r) => r.similarity >= 0.2)).toBe(true);
    const exact = await search.search({ query: `${w} carbon capture pilot signed`, orgId, threshold: 0.99 });
    expect(exact.map((r) => r.metadata.external_id)).toEqual([`${w}-f1`]);

    const top2 = await search.search({ query: `${w} carbon capture`, orgId, threshold: 0.2, limit: 2 });
    expect(top2).toHaveLength(2);
    expect(top2[0].similarity).toBeGreaterThanOrEqual(top2[1].similarity);

    const facts = await search.search({ query: `${w} carbon capture pilot`, orgId, tables: ['chat_facts'], filters: { startup_id: 's2' }, threshold: 0.2 });
    expect(facts.map((r) => r.metadata.external_id)).toEqual([`${w}-f2`]);
    // Another org sees the global pack but neither this org's playbook nor its facts.
    const other = await search.search({ query: `${w} carbon capture`, orgId: randomOrg(), threshold: 0.2 });
    expect(new Set(other.filter((r) => r.content.includes(w)).map((r) => r.table))).toEqual(new Set(['industry_packs']));
  });

  it('rejects an unknown table or bad options with a ValidationError before embedding or querying', async () => {
    const embed = createHashEmbed();
    const search = createVectorSearch({ pool, embed });
    const err = await search.search({ query: 'x', orgId: 'o', tables: ['chat_facts', 'api_keys'] }).catch((e) => e);
    expect(err).toBeInstanceOf(ValidationError);
    expect(err.details[0].path).toBe('tables.1');
    await expect(search.search({ query: 'x', orgId: 'o', limit: 0 })).rejects.toThrow(ValidationError);
    await expect(search.search({ query: ' ', orgId: 'o' })).rejects.toThrow(ValidationError);
    const nul = await search.search({ query: 'x', orgId: 'o', filters: { startup_id: 's\u0000' } }).catch((e) => e);
    expect(nul).toBeInstanceOf(ValidationError);
    expect(nul.details[0].path).toBe('filters.startup_id');
    expect(embed.calls).toBe(0);
  });
});
