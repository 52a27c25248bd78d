import { randomUUID } from 'node:crypto';
import pg from 'pg';
import pgvector from 'pgvector';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { migrate } from '../src/shared/infra/db/migrate.js';
import { createPool } from '../src/shared/infra/db/pool.js';
import { hashEmbedOne } from './helpers/hash-embed.js';
import { databaseUrl, randomOrg } from './helpers/env.js';

// The knowledge tables are shared with other test files, so every document carries this run's tag word
// and assertions only look at documents with this tag.
const tag = `zq${randomUUID().slice(0, 6).replace(/[^a-z]/g, 'x')}`;
const vec = (text: string) => pgvector.toSql(hashEmbedOne(text));

describe('match_documents', () => {
  let pool: pg.Pool;
  const orgA = randomOrg();
  const orgB = randomOrg();

  const match = async (table: string, org: string, query: string, threshold = 0.3, count = 10, filter: object | null = null) => {
    const { rows } = await pool.query(
      'SELECT id, content, similarity, metadata FROM match_documents($1::vector, $2, $3, $4, $5, $6::jsonb)',
      [vec(query), table, org, threshold, count, filter && JSON.stringify(filter)],
    );
    return rows.filter((r) => String(r.metadata.external_id).startsWith(tag));
  };
  const ids = (rows: Array<{ metadata: { external_id: string } }>) => rows.map((r) => r.metadata.external_id).sort();

  beforeAll(async () => {
    pool = createPool(databaseUrl(), { max: 2 });
    await migrate(pool);
    const fact = (ext: string, org: string, content: string, startup: string | null, expires: string | null) =>
      pool.query(
        'INSERT INTO chat_facts (external_id, org_id, startup_id, content, fact_type, expires_at, embedding) VALUES ($1, $2, $3, $4, $5, $6, $7::vector)',
        [`${tag}-${ext}`, org, startup, content, 'metric', expires, vec(content)],
      );
    await fact('a1', orgA, `${tag} revenue grew forty percent`, 's1', null);
    await fact('a2', orgA, `${tag} revenue churn is low`, 's2', new Date(Date.now() + 3600_000).toISOString());
    await fact('a3', orgA, `${tag} revenue target missed`, 's1', new Date(Date.now() - 1000).toISOString());
    await fact('b1', orgB, `${tag} revenue grew forty percent`, 's1', null);

    const playbook = (ext: string, org: string | null, title: string, active = true) =>
      pool.query('INSERT INTO playbooks (external_id, org_id, title, description, type, is_active, embedding) VALUES ($1, $2, $3, $4, $5, $6, $7::vector)', [
        `${tag}-${ext}`,
        org,
        title,
        'how to run it',
        'sales',
        active,
        vec(`${title}\nhow to run it`),
      ]);
    await playbook('pg', null, `${tag} outbound sales playbook`);
    await playbook('pa', orgA, `${tag} outbound sales for org a`);
    await playbook('pb', orgB, `${tag} outbound sales for org b`);
    await playbook('px', null, `${tag} outbound sales retired`, false);

    await pool.query(
      'INSERT INTO industry_packs (external_id, industry, display_name, description, embedding) VALUES ($1, $2, $3, $4, $5::vector), ($6, $7, $8, $9, $10::vector)',
      [`${tag}-fin`, 'fintech', `${tag} Fintech`, 'payments lending', vec(`${tag} Fintech payments lending`), `${tag}-bio`, 'biotech', `${tag} Biotech`, 'clinical trials', vec(`${tag} Biotech clinical trials`)],
    );
  });
  afterAll(() => pool.end());

  it('rejects any table outside the allowlist, including injection attempts', async () => {
    for (const table of ['api_keys', 'semantic_cache', 'chat_facts; DROP TABLE orgs', 'CHAT_FACTS', '']) {
      await expect(pool.query("SELECT * FROM match_documents($1::vector, $2, 'o')", [vec('x'), table])).rejects.toThrow(/unknown table/);
    }
    expect((await pool.query("SELECT to_regclass('orgs') AS t")).rows[0].t).not.toBeNull();
  });

  it('returns only the asking org\'s non-expired chat facts, filtered by startup_id', async () => {
    expect(ids(await match('chat_facts', orgA, `${tag} revenue`))).toEqual([`${tag}-a1`, `${tag}-a2`]);
    expect(ids(await match('chat_facts', orgB, `${tag} revenue`))).toEqual([`${tag}-b1`]);
    expect(ids(await match('chat_facts', orgA, `${tag} revenue`, 0.3, 10, { startup_id: 's1' }))).toEqual([`${tag}-a1`]);
    expect(await match('chat_facts', randomOrg(), `${tag} revenue grew forty percent`, 0)).toEqual([]);
  });

  it('returns global playbooks plus the org\'s own, never another org\'s or inactive ones', async () => {
    expect(ids(await match('playbooks', orgA, `${tag} outbound sales`))).toEqual([`${tag}-pa`, `${tag}-pg`]);
    expect(ids(await match('playbooks', orgB, `${tag} outbound sales`))).toEqual([`${tag}-pb`, `${tag}-pg`]);
    expect(ids(await match('playbooks', randomOrg(), `${tag} outbound sales`))).toEqual([`${tag}-pg`]);
  });

  it('ranks by cosine similarity, applies the threshold and the count', async () => {
    const rows = await match('industry_packs', orgA, `${tag} fintech payments`, 0.1);
    expect(rows[0].metadata.external_id).toBe(`${tag}-fin`);
    expect(rows[0].similarity).toBeGreaterThan(0.5);
    for (let i = 1; i < rows.length; i++) expect(rows[i - 1].similarity).toBeGreaterThanOrEqual(rows[i].similarity);
    const strict = await match('industry_packs', orgA, `${tag} fintech payments`, rows[0].similarity - 0.01);
    expect(ids(strict)).toEqual([`${tag}-fin`]);
    expect(await match('industry_packs', orgA, `${tag} fintech payments`, 0.1, 1)).toHaveLength(1);
    expect(ids(await match('industry_packs', orgA, `${tag}`, 0.05, 10, { industry: 'biotech' }))).toEqual([`${tag}-bio`]);
  });
});

describe('HNSW search settings', () => {
  it('sizes ef_search by the index walked: 100 up to 128 MiB (about 32k rows), 400 above (recall@10 0.965 at 100k rows in one org, BENCH_ONLY=vectors-large)', async () => {
    const pool = new pg.Pool({ connectionString: databaseUrl(), max: 1 });
    try {
      const { rows } = await pool.query(`SELECT proname, proconfig, prosrc FROM pg_proc WHERE proname IN ('match_documents', 'semantic_cache_nearest')`);
      expect(rows).toHaveLength(2);
      const index: Record<string, string> = { match_documents: 'chat_facts_embedding_idx', semantic_cache_nearest: 'semantic_cache_embedding_idx' };
      for (const r of rows) {
        // The default, restored on exit; the large-scope branch raises it for its one statement.
        expect(r.proconfig).toContain('hnsw.ef_search=100');
        // Measured alongside: relaxed_order and other max_scan_tuples bought no recall at 100k, so 012's stay.
        expect(r.proconfig).toContain('hnsw.iterative_scan=strict_order');
        expect(r.proconfig).toContain('hnsw.max_scan_tuples=20000');
        expect(r.prosrc).toContain(`set_config('hnsw.ef_search', vector_ef_search_for(pg_relation_size('${index[r.proname as string]}'))::text, true)`);
      }
      const rule = await pool.query(`SELECT vector_ef_search_for(0) AS empty, vector_ef_search_for(134217728) AS at, vector_ef_search_for(134217729) AS above, vector_ef_search_for(781 * 1024 * 1024) AS big`);
      expect(rule.rows[0]).toEqual({ empty: 100, at: 100, above: 400, big: 400 });
      // The test database's indexes are small: their queries keep 100 (and its speed).
      const here = await pool.query(`SELECT vector_ef_search_for(pg_relation_size('chat_facts_embedding_idx')) AS ef`);
      expect(here.rows[0].ef).toBe(100);
    } finally {
      await pool.end();
    }
  });
});
