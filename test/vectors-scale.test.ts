import pg from 'pg';
import { describePhase, parseIngestArgs } from '../src/app/cli/ingest.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { purgeExpiredSemanticCache } from '../src/shared/cache/semantic-cache-purge.js';
import type { EmbeddedPostgres } from '../src/shared/infra/db/embedded-postgres.js';
import { migrate } from '../src/shared/infra/db/migrate.js';
import { createPool } from '../src/shared/infra/db/pool.js';
import { createTenantIndex, tenantIndexName, withHnswRebuild, type IndexPhase } from '../src/shared/knowledge/hnsw-rebuild.js';
import { toVectorSql } from '../src/shared/knowledge/embedding.js';
import { hashEmbedOne } from './helpers/hash-embed.js';
import { freshEmbeddedPostgres } from './helpers/fresh-embedded.js';

// A private in-memory PGlite: this file drops and rebuilds an HNSW index, runs ANALYZE and purges every
// expired row, none of which may touch the database the other test files share.
const SCOPE = { agent: 'knowledge', action: 'ask', model: 'gemini-2.5-flash', promptVersion: 1 };
const BIG = 'org_big';
const SMALL = 'org_small';
/** A second large org (above EXACT_MAX) that gets no index of its own. */
const BIG2 = 'org_big_2';
const WORDS = 'revenue churn hiring robotics logistics fintech pricing seed runway burn customer retention enterprise sales channel partner compliance security cloud data model latency supply warehouse fleet battery solar clinic insurance lending payments fraud identity privacy marketplace creator subscription founder investor equity margin forecast pipeline renewal onboarding support outage roadmap launch pilot audit payroll remote export tariff freight drone sensor patent brand campaign referral cohort funnel'.split(' ');

/** Deterministic pseudo-random text `i`: 6-9 words of a small vocabulary, so neighbourhoods overlap. */
function text(i: number): string {
  let s = (i + 1) * 2654435761;
  const next = () => ((s = Math.imul(s ^ (s >>> 15), 2246822519) >>> 0) % 100_000) / 100_000;
  return Array.from({ length: 6 + Math.floor(next() * 4) }, () => WORDS[Math.floor(next() * WORDS.length)]).join(' ');
}

// The two plans each similarity function chooses between (migration 012), as fixed text with $n parameters.
const SCOPE_WHERE = 'c.org_id = $2 AND c.agent = $3 AND c.action = $4 AND c.model = $5 AND c.prompt_version = $6 AND c.expires_at > now()';
const CACHE_ANN = `SELECT c.response FROM semantic_cache c WHERE ${SCOPE_WHERE} ORDER BY c.embedding <=> $1::vector LIMIT 1`;
const CACHE_EXACT = `SELECT s.response FROM (SELECT c.response, c.embedding <=> $1::vector AS d FROM semantic_cache c WHERE ${SCOPE_WHERE} OFFSET 0) s ORDER BY s.d LIMIT 1`;
const FACTS_ANN = `SELECT f.external_id FROM chat_facts f
  WHERE f.org_id = $2 AND (f.expires_at IS NULL OR f.expires_at > now()) AND 1 - (f.embedding <=> $1::vector) >= -1
  ORDER BY f.embedding <=> $1::vector LIMIT 10`;
const FACTS_EXACT = `SELECT s.external_id FROM (SELECT f.external_id, f.embedding <=> $1::vector AS d FROM chat_facts f
  WHERE f.org_id = $2 AND (f.expires_at IS NULL OR f.expires_at > now()) OFFSET 0) s ORDER BY s.d LIMIT 10`;
/**
 * The tenant branch's query (migrations 015, 017): the org as a literal, as the function's EXECUTE format(%L)
 * builds it, ordered by the tenant index's expression.
 */
const factsTenant = (org: string) => FACTS_ANN.replace('f.org_id = $2', `f.org_id = '${org}'`).replace('ORDER BY f.embedding', 'ORDER BY (l2_normalize(f.embedding)::vector(768))');
const cacheTenant = (org: string) =>
  CACHE_ANN.replace('c.org_id = $2', `c.org_id = '${org}'`)
    .replace('ORDER BY c.embedding', 'ORDER BY (l2_normalize(c.embedding)::vector(768))')
    .replace(/\$(\d)/g, (_, n: string) => (n === '1' ? '$1' : `$${Number(n) - 1}`));
/** Scopes above this many rows take the HNSW plan here (the migration's 2000, lowered so a test corpus of a few hundred rows is "large"). */
const EXACT_MAX = 100;

describe('vectors at scale', () => {
  let db: EmbeddedPostgres;
  let pool: pg.Pool;

  /** Runs `sql` with a function's own SET clauses (pg_proc.proconfig) applied by SET LOCAL, as the function does. */
  async function asFunction<T extends pg.QueryResultRow>(fn: string, sql: string, params: unknown[], override: Record<string, string | null> = {}) {
    const { rows } = await pool.query<{ proconfig: string[] | null }>('SELECT proconfig FROM pg_proc WHERE proname = $1', [fn]);
    const settings: Record<string, string | null> = Object.fromEntries((rows[0]?.proconfig ?? []).map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
    Object.assign(settings, override);
    const client = await pool.connect();
    try {
      await client.query('BEGIN');
      for (const [k, v] of Object.entries(settings)) if (v !== null) await client.query('SELECT set_config($1, $2, true)', [k, v]);
      const res = await client.query<T>(sql, params);
      await client.query('COMMIT');
      return res.rows;
    } finally {
      client.release();
    }
  }
  const plan = async (fn: string, sql: string, params: unknown[], override?: Record<string, string | null>) =>
    (await asFunction<{ 'QUERY PLAN': string }>(fn, `EXPLAIN ${sql}`, params, override)).map((r) => r['QUERY PLAN']).join('\n');

  async function insertCache(org: string, from: number, to: number, expires = "now() + interval '1 day'") {
    const params: unknown[] = [];
    const tuples: string[] = [];
    for (let i = from; i < to; i++) {
      params.push(org, text(i), toVectorSql(hashEmbedOne(text(i))), JSON.stringify({ doc: i }));
      const b = params.length - 4;
      tuples.push(`($${b + 1}, '${SCOPE.agent}', '${SCOPE.action}', '${SCOPE.model}', ${SCOPE.promptVersion}, $${b + 2}, $${b + 3}::vector, $${b + 4}::jsonb, ${expires})`);
    }
    await pool.query(`INSERT INTO semantic_cache (org_id, agent, action, model, prompt_version, query, embedding, response, expires_at) VALUES ${tuples.join(', ')}`, params);
  }

  beforeAll(async () => {
    db = await freshEmbeddedPostgres();
    pool = createPool(db.url, { max: 2 });
    await migrate(pool);
    await pool.query(`CREATE OR REPLACE FUNCTION vector_exact_scan_max() RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT ${EXACT_MAX}'`);
    // The corpus goes in with the HNSW indexes dropped and rebuilt once (the bulk path `ingest --rebuild-index` takes).
    await withHnswRebuild(pool, 'semantic_cache', { memory: '64MB' }, async () => {
      for (let i = 0; i < 450; i += 150) await insertCache(BIG, i, i + 150);
      await insertCache(SMALL, 5000, 5012);
    });
    await withHnswRebuild(pool, 'chat_facts', { memory: '64MB' }, async () => {
      for (const [org, from, to] of [[BIG, 0, 450], [SMALL, 5000, 5012]] as const) {
        for (let s = from; s < to; s += 300) {
          const params: unknown[] = [];
          const tuples: string[] = [];
          for (let i = s; i < Math.min(to, s + 300); i++) {
            params.push(`doc-${i}`, org, text(i), toVectorSql(hashEmbedOne(text(i))));
            const b = params.length - 4;
            tuples.push(`($${b + 1}, $${b + 2}, $${b + 3}, $${b + 4}::vector)`);
          }
          await pool.query(`INSERT INTO chat_facts (external_id, org_id, content, embedding) VALUES ${tuples.join(', ')}`, params);
        }
      }
    });
    await pool.query('ANALYZE semantic_cache');
    await pool.query('ANALYZE chat_facts');
  }, 180_000);
  afterAll(async () => {
    await pool?.end();
    await db?.stop();
  });

  it('keeps embeddings in their rows (migration 016), so a similarity query reads no TOAST chunk per row', async () => {
    const { rows: storage } = await pool.query(
      `SELECT c.relname AS table, a.attstorage AS storage FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
       WHERE a.attname = 'embedding' AND c.relname IN ('industry_packs', 'playbooks', 'chat_facts', 'semantic_cache') ORDER BY 1`,
    );
    expect(storage).toEqual(['chat_facts', 'industry_packs', 'playbooks', 'semantic_cache'].map((table) => ({ table, storage: 'm' })));
    // pgvector's own default, which the migration overrides per column: external, every embedding out of line.
    expect((await pool.query(`SELECT typstorage FROM pg_type WHERE typname = 'vector'`)).rows[0].typstorage).toBe('e');
    // pg_column_toast_chunk_id is null for a value kept in its row. The corpus above (sparse, compressible) and
    // a dense vector (incompressible, 3 kB raw) both stay in the row.
    const dense = `[${Array.from({ length: 768 }, (_, i) => (Math.sin(i * 7.1) / 19.6).toFixed(6)).join(',')}]`;
    await pool.query(`INSERT INTO chat_facts (external_id, org_id, content, embedding) VALUES ('dense-1', 'org_dense', 'dense', $1::vector)`, [dense]);
    try {
      const outOfLine = async (table: string) =>
        (await pool.query(`SELECT count(*)::int AS rows, count(pg_column_toast_chunk_id(embedding))::int AS toasted FROM ${table}`)).rows[0];
      expect(await outOfLine('chat_facts')).toEqual({ rows: 463, toasted: 0 });
      expect(await outOfLine('semantic_cache')).toEqual({ rows: 462, toasted: 0 });
      const { rows } = await pool.query(`SELECT pg_column_size(embedding) AS size, pg_column_compression(embedding) AS compression FROM chat_facts WHERE external_id = 'dense-1'`);
      expect(rows[0]).toEqual({ size: 3080, compression: null });
    } finally {
      await pool.query(`DELETE FROM chat_facts WHERE external_id = 'dense-1'`);
    }
  });

  it('semantic-cache lookup: a large scope orders through the HNSW index, a small one is ranked exactly; both find the exact nearest', async () => {
    for (const [org, q] of [[BIG, text(17)], [SMALL, text(5003)]] as const) {
      const params = [toVectorSql(hashEmbedOne(`${q} forecast`)), org, SCOPE.agent, SCOPE.action, SCOPE.model, SCOPE.promptVersion];
      const [exact] = await asFunction<{ response: { doc: number } }>('semantic_cache_nearest', CACHE_EXACT, params);
      const { rows } = await pool.query<{ response: { doc: number } }>('SELECT response FROM semantic_cache_nearest($1::vector, $2, $3, $4, $5, $6)', params);
      expect(rows[0].response.doc, org).toBe(exact.response.doc);
    }
    const big = [toVectorSql(hashEmbedOne(text(17))), BIG, SCOPE.agent, SCOPE.action, SCOPE.model, SCOPE.promptVersion];
    const ann = await plan('semantic_cache_nearest', CACHE_ANN, big, { enable_sort: 'off' });
    expect(ann).toMatch(/Index Scan using semantic_cache_embedding_idx/);
    expect(ann).not.toMatch(/Sort/);
    const [viaIndex] = await asFunction<{ response: { doc: number } }>('semantic_cache_nearest', CACHE_ANN, big, { enable_sort: 'off' });
    const [exactBig] = await asFunction<{ response: { doc: number } }>('semantic_cache_nearest', CACHE_EXACT, big);
    expect(viaIndex.response.doc).toBe(exactBig.response.doc);
    const small = [big[0], SMALL, ...big.slice(2)];
    const exactPlan = await plan('semantic_cache_nearest', CACHE_EXACT, small);
    expect(exactPlan).toMatch(/Sort/);
    expect(exactPlan).not.toMatch(/semantic_cache_embedding_idx/);
  });

  it('match_documents over chat_facts: HNSW for a large scope with recall@10 >= 0.9 against an exact scan, exact for a small one', async () => {
    for (const org of [BIG, SMALL]) {
      let recall = 0;
      const queries = org === BIG ? [3, 150, 299, 420] : [5001, 5007];
      for (const i of queries) {
        const params = [toVectorSql(hashEmbedOne(`${text(i)} runway`)), org];
        const shape = await plan('match_documents', org === BIG ? FACTS_ANN : FACTS_EXACT, params, org === BIG ? { enable_sort: 'off' } : {});
        if (org === BIG) expect(shape, shape).toMatch(/Index Scan using chat_facts_embedding_idx/);
        else expect(shape, shape).not.toMatch(/chat_facts_embedding_idx/);
        const viaFn = await pool.query<{ metadata: { external_id: string } }>("SELECT metadata FROM match_documents($1::vector, 'chat_facts', $2, -1, 10)", params);
        const found = viaFn.rows.map((r) => r.metadata.external_id);
        if (org === BIG) {
          const ann = await asFunction<{ external_id: string }>('match_documents', FACTS_ANN, params, { enable_sort: 'off' });
          expect(found).toEqual(ann.map((r) => r.external_id));
        }
        const exact = await asFunction<{ external_id: string }>('match_documents', FACTS_EXACT, params);
        const truth = new Set(exact.map((r) => r.external_id));
        expect(truth.size).toBe(10);
        recall += found.filter((id) => truth.has(id)).length / truth.size;
      }
      expect(recall / queries.length, org).toBeGreaterThanOrEqual(org === BIG ? 0.9 : 1);
    }
  });

  it('the HNSW rebuild recreates the catalogued index definition, also when the load fails, and reports its phases', async () => {
    const def = async () => (await pool.query("SELECT indexdef FROM pg_indexes WHERE indexname = 'chat_facts_embedding_idx'")).rows[0]?.indexdef as string | undefined;
    const before = await def();
    expect(before).toMatch(/USING hnsw \(embedding vector_cosine_ops\)/);
    const phases: IndexPhase['phase'][] = [];
    let during: string | undefined = 'not run';
    await expect(
      withHnswRebuild(pool, 'chat_facts', { memory: '64MB', onPhase: (p) => phases.push(p.phase) }, async () => {
        during = await def();
        throw new Error('load failed');
      }),
    ).rejects.toThrow('load failed');
    expect(during).toBeUndefined();
    expect(phases).toEqual(['drop', 'build', 'built']);
    expect(await def()).toBe(before);
  });

  it('the bulk rebuild for an org also takes its own index out of the way and recreates it; --tenant-index builds one', async () => {
    const own = await tenantIndexName(pool, 'chat_facts', BIG2);
    const phases: string[] = [];
    const onPhase = (p: IndexPhase) => phases.push(`${p.phase} ${p.index}`);
    expect(await createTenantIndex(pool, 'chat_facts', BIG2, { memory: '64MB', onPhase })).toBe(own);
    expect(phases).toEqual([`build ${own}`, `built ${own}`]);
    const exists = async (ix: string) => (await pool.query<{ e: boolean }>('SELECT to_regclass($1) IS NOT NULL AS e', [ix])).rows[0].e;
    phases.length = 0;
    let during: boolean[] = [];
    await withHnswRebuild(pool, 'chat_facts', { memory: '64MB', orgId: BIG2, onPhase }, async () => {
      during = [await exists(own), await exists('chat_facts_embedding_idx')];
    });
    expect(during).toEqual([false, false]);
    expect(await exists(own)).toBe(true);
    expect(phases).toEqual([
      'drop chat_facts_embedding_idx',
      `drop ${own}`,
      'build chat_facts_embedding_idx',
      'built chat_facts_embedding_idx',
      `build ${own}`,
      `built ${own}`,
    ]);
    await pool.query("SELECT vector_tenant_index_drop('chat_facts', $1)", [BIG2]);
  });

  it('npm run ingest -- --rebuild-index takes the bulk path and names each index phase', () => {
    expect(parseIngestArgs(['f.jsonl', '--table', 'chat_facts', '--org', 'o', '--rebuild-index'])).toMatchObject({ rebuildIndex: true });
    expect(parseIngestArgs(['f.jsonl', '--table', 'playbooks']).rebuildIndex).toBeUndefined();
    expect(parseIngestArgs(['f.jsonl', '--table', 'chat_facts', '--org', 'o', '--tenant-index'])).toMatchObject({ tenantIndex: true, orgId: 'o' });
    expect(() => parseIngestArgs(['f.jsonl', '--table', 'playbooks', '--tenant-index'])).toThrow(/--tenant-index is for chat_facts/);
    expect(describePhase({ phase: 'build', index: 'chat_facts_embedding_idx', memory: '512MB' })).toBe('index: building chat_facts_embedding_idx (HNSW, maintenance_work_mem 512MB)...\n');
    expect(describePhase({ phase: 'built', index: 'chat_facts_embedding_idx', ms: 12_345 })).toBe('index: built chat_facts_embedding_idx in 12.3 s\n');
  });

  /**
   * Index scans started on `indexes` while `sql` runs, counted in the same transaction (pg_stat_get_xact_numscans).
   * plan_cache_mode force_generic_plan: what a plpgsql statement settles on after five calls, and it cannot prove a
   * partial index's predicate from `org_id = $n`. (A custom plan, for the first calls or when cheaper, can: without
   * this setting a function that never took the tenant branch was seen walking the org's index too.)
   */
  async function scansDuring(indexes: string[], sql: string, params: unknown[]) {
    const client = await pool.connect();
    // Per index: scans started and index entries returned (pgvector counts each candidate its walk hands out).
    const count = async () =>
      (
        await client.query<{ n: string[]; t: string[] }>(
          `SELECT array_agg(pg_stat_get_xact_numscans(to_regclass(i))::text ORDER BY o) AS n,
                  array_agg(pg_stat_get_xact_tuples_returned(to_regclass(i))::text ORDER BY o) AS t
           FROM unnest($1::text[]) WITH ORDINALITY u(i, o)`,
          [indexes],
        )
      ).rows[0];
    try {
      await client.query('BEGIN');
      await client.query("SELECT set_config('plan_cache_mode', 'force_generic_plan', true)");
      const before = await count();
      const { rows } = await client.query(sql, params);
      const after = await count();
      await client.query('COMMIT');
      const delta = (key: 'n' | 't') => Object.fromEntries(indexes.map((ix, k) => [ix, Number(after[key][k]) - Number(before[key][k])]));
      return { rows, scans: delta('n'), tuples: delta('t') };
    } finally {
      client.release();
    }
  }

  it('a similarity threshold no neighbour reaches ends the HNSW walk at match_count rows (shared and own index), with the same rows', async () => {
    const shared = 'chat_facts_embedding_idx';
    const own = (await pool.query<{ idx: string }>("SELECT vector_tenant_index_name('chat_facts', $1) AS idx", [BIG])).rows[0].idx;
    const fn = "SELECT metadata, similarity FROM match_documents($1::vector, 'chat_facts', $2, $3, 10)";
    const check = async (index: string) => {
      for (const i of [3, 299]) {
        const q = toVectorSql(hashEmbedOne(`${text(i)} runway`));
        const all = await scansDuring([index], fn, [q, BIG, -1]);
        expect(all.rows).toHaveLength(10);
        expect(all.scans[index]).toBe(1);
        const sims = all.rows.map((r: { similarity: number }) => r.similarity);
        // A threshold between the 4th and 5th best: the rows passing it are the first four of the unfiltered top 10.
        const between = (sims[3] + sims[4]) / 2;
        const some = await scansDuring([index], fn, [q, BIG, between]);
        expect(some.rows, index).toEqual(all.rows.slice(0, 4));
        // Above every row: nothing passes. Before revision 1 of match_documents this walked the whole index
        // (max_scan_tuples 20,000 is above this corpus), one candidate per row of every org in it.
        const none = await scansDuring([index], fn, [q, BIG, Math.min(1, sims[0] + 0.01)]);
        expect(none.rows).toEqual([]);
        for (const r of [some, none]) expect(r.tuples[index], `${index}: entries read, threshold -1 read ${all.tuples[index]}`).toBeLessThanOrEqual(all.tuples[index]);
      }
    };
    await check(shared);
    await pool.query("SELECT vector_tenant_index_create('chat_facts', $1, '64MB')", [BIG]);
    try {
      await check(own);
    } finally {
      await pool.query("SELECT vector_tenant_index_drop('chat_facts', $1)", [BIG]);
    }
  });

  it('a tenant with its own index (vector_tenant_index_create) is walked through it, with the org as a literal; other tenants keep their plans', async () => {
    const params: unknown[] = [];
    const tuples: string[] = [];
    for (let i = 6000; i < 6150; i++) {
      params.push(`doc-${i}`, BIG2, text(i), toVectorSql(hashEmbedOne(text(i))));
      const b = params.length - 4;
      tuples.push(`($${b + 1}, $${b + 2}, $${b + 3}, $${b + 4}::vector)`);
    }
    await pool.query(`INSERT INTO chat_facts (external_id, org_id, content, embedding) VALUES ${tuples.join(', ')}`, params);
    const created = await pool.query<{ idx: string }>("SELECT vector_tenant_index_create('chat_facts', $1, '64MB') AS idx", [BIG]);
    const own = created.rows[0].idx;
    expect(own).toMatch(/^chat_facts_org_[0-9a-f]{16}_hnsw$/);
    // Idempotent, and the catalogued definition is the shared one's plus the org predicate.
    expect((await pool.query("SELECT vector_tenant_index_create('chat_facts', $1) AS idx", [BIG])).rows[0].idx).toBe(own);
    const def = (await pool.query<{ indexdef: string }>('SELECT indexdef FROM pg_indexes WHERE indexname = $1', [own])).rows[0].indexdef;
    // Migration 017: the tenant's graph is denser than the shared one's, and walked at ef_search 100.
    expect(def).toMatch(/USING hnsw \(\(\(l2_normalize\(embedding\)\)::vector\(768\)\) vector_cosine_ops\) WITH \(m='24', ef_construction='128'\) WHERE \(org_id = 'org_big'::text\)/);
    const ef = (await pool.query<{ ef: number }>('SELECT vector_tenant_ef_search($1) AS ef', [own])).rows[0].ef;
    expect(ef).toBe(100);
    // An index built before 017 (pgvector's default graph) keeps the ef_search its recall needs.
    const older = (await pool.query<{ idx: string }>("SELECT vector_tenant_index_name('chat_facts', 'org_pre017') AS idx")).rows[0].idx;
    await pool.query(`CREATE INDEX ${older} ON chat_facts USING hnsw (embedding vector_cosine_ops) WHERE org_id = 'org_pre017'`);
    expect((await pool.query<{ ef: number }>('SELECT vector_tenant_ef_search($1) AS ef', [older])).rows[0].ef).toBe(200);
    await pool.query(`DROP INDEX ${older}`);
    const shared = 'chat_facts_embedding_idx';
    const fn = "SELECT metadata FROM match_documents($1::vector, 'chat_facts', $2, -1, 10)";
    // The tenant query orders by the tenant index's expression, which the shared index cannot provide: with the
    // tenant index hidden, its plan walks no HNSW index at all (at 100k rows the planner preferred the shared
    // index, m 16, over a column index of m 24: recall fell to the shared index's).
    const hider = await pool.connect();
    try {
      await hider.query('BEGIN');
      await hider.query(`DROP INDEX ${own}`);
      await hider.query("SELECT set_config('enable_sort', 'off', true)");
      const rows = (await hider.query<{ 'QUERY PLAN': string }>(`EXPLAIN ${factsTenant(BIG)}`, [toVectorSql(hashEmbedOne(text(3)))])).rows;
      const hidden = rows.map((r) => r['QUERY PLAN']).join('\n');
      expect(hidden, hidden).not.toMatch(/Index Scan using/);
    } finally {
      await hider.query('ROLLBACK');
      hider.release();
    }


    // Why the tenant branch EXECUTEs with the org as a literal: with the org as a parameter, a generic plan (what a
    // plpgsql RETURN QUERY settles on after five calls) cannot prove the partial index's predicate.
    const client = await pool.connect();
    try {
      await client.query(`PREPARE tenant_probe(vector, text) AS ${FACTS_ANN}`);
      await client.query('BEGIN');
      await client.query("SELECT set_config('enable_sort', 'off', true), set_config('plan_cache_mode', 'force_generic_plan', true)");
      const generic = (await client.query<{ 'QUERY PLAN': string }>(`EXPLAIN EXECUTE tenant_probe('${toVectorSql(hashEmbedOne(text(3)))}', '${BIG}')`)).rows.map((r) => r['QUERY PLAN']).join('\n');
      await client.query('COMMIT');
      expect(generic, generic).toMatch(new RegExp(`Index Scan using ${shared}`));
      expect(generic).not.toContain(own);
    } finally {
      await client.query('DEALLOCATE tenant_probe').catch(() => undefined);
      client.release();
    }

    let recall = 0;
    const queries = [3, 150, 299, 420];
    for (const i of queries) {
      const q = toVectorSql(hashEmbedOne(`${text(i)} runway`));
      // The query text the tenant branch runs uses the org's own index.
      const literal = await plan('match_documents', factsTenant(BIG), [q], { enable_sort: 'off', 'hnsw.ef_search': String(ef) });
      expect(literal, literal).toMatch(new RegExp(`Index Scan using ${own}`));
      const viaFn = await scansDuring([own, shared], fn, [q, BIG]);
      expect(viaFn.scans).toEqual({ [own]: 1, [shared]: 0 });
      const found = viaFn.rows.map((r: { metadata: { external_id: string } }) => r.metadata.external_id);
      const direct = await asFunction<{ external_id: string }>('match_documents', factsTenant(BIG), [q], { enable_sort: 'off', 'hnsw.ef_search': String(ef) });
      expect(found).toEqual(direct.map((r) => r.external_id));
      const truth = new Set((await asFunction<{ external_id: string }>('match_documents', FACTS_EXACT, [q, BIG])).map((r) => r.external_id));
      recall += found.filter((id) => truth.has(id)).length / truth.size;
      // A large org without its own index keeps the shared index; a small one the exact scan (neither index).
      const other = await scansDuring([own, shared], fn, [q, BIG2]);
      expect(other.scans, 'large org without its own index').toEqual({ [own]: 0, [shared]: 1 });
      expect(other.rows).toHaveLength(10);
      const small = await scansDuring([own, shared], fn, [q, SMALL]);
      expect(small.scans, 'small org').toEqual({ [own]: 0, [shared]: 0 });
    }
    expect(recall / queries.length).toBeGreaterThanOrEqual(0.9);

    // Dropped: the org is back on the shared plan at once.
    expect((await pool.query("SELECT vector_tenant_index_drop('chat_facts', $1) AS d", [BIG])).rows[0].d).toBe(true);
    expect((await pool.query("SELECT vector_tenant_index_drop('chat_facts', $1) AS d", [BIG])).rows[0].d).toBe(false);
    const back = await scansDuring([shared], fn, [toVectorSql(hashEmbedOne(text(3))), BIG]);
    expect(back.scans).toEqual({ [shared]: 1 });
    await expect(pool.query("SELECT vector_tenant_index_create('playbooks', $1)", [BIG])).rejects.toMatchObject({ code: '22023' });
  });

  it('semantic-cache lookup walks the org\'s own index when it has one, and still finds the exact nearest', async () => {
    const own = (await pool.query<{ idx: string }>("SELECT vector_tenant_index_create('semantic_cache', $1, '64MB') AS idx", [BIG])).rows[0].idx;
    expect(own).toMatch(/^semantic_cache_org_[0-9a-f]{16}_hnsw$/);
    try {
      const shared = 'semantic_cache_embedding_idx';
      const params = [toVectorSql(hashEmbedOne(text(17))), BIG, SCOPE.agent, SCOPE.action, SCOPE.model, SCOPE.promptVersion];
      const literal = await plan('semantic_cache_nearest', cacheTenant(BIG), [params[0], ...params.slice(2)], { enable_sort: 'off' });
      expect(literal, literal).toMatch(new RegExp(`Index Scan using ${own}`));
      const viaFn = await scansDuring([own, shared], 'SELECT response FROM semantic_cache_nearest($1::vector, $2, $3, $4, $5, $6)', params);
      expect(viaFn.scans).toEqual({ [own]: 1, [shared]: 0 });
      const [exact] = await asFunction<{ response: { doc: number } }>('semantic_cache_nearest', CACHE_EXACT, params);
      expect(viaFn.rows[0].response.doc).toBe(exact.response.doc);
    } finally {
      await pool.query("SELECT vector_tenant_index_drop('semantic_cache', $1)", [BIG]);
    }
  });

  it('the maintenance purge deletes expired entries in bounded batches and keeps live ones', async () => {
    const org = 'org_expiring';
    await insertCache(org, 9000, 9025, "now() - interval '1 second'");
    await insertCache(org, 9100, 9103);
    const first = await purgeExpiredSemanticCache(pool, { batchSize: 10, maxBatches: 2 });
    expect(first).toEqual({ deleted: 20, batches: 2 });
    const rest = await purgeExpiredSemanticCache(pool, { batchSize: 10 });
    expect(rest).toEqual({ deleted: 5, batches: 1 });
    const { rows } = await pool.query('SELECT count(*)::int AS n FROM semantic_cache WHERE org_id = $1', [org]);
    expect(rows[0].n).toBe(3);
  });
});
