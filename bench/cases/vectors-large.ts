import { createLlmClient } from '../../src/shared/infra/llm/llm-client.js';
import { toVectorParam } from '../../src/shared/knowledge/embedding.js';
import { createTenantIndex, tenantIndexName } from '../../src/shared/knowledge/hnsw-rebuild.js';
import { createVectorSearch, DEFAULT_SEARCH_THRESHOLD as DEFAULT_THRESHOLD } from '../../src/shared/knowledge/vector-search.js';
import type { BenchContext } from '../lib/context.js';
import { functionSettings, sizedEfSearch, withSettings } from '../lib/pg-settings.js';
import { createCorpusMirror } from '../lib/corpus-mirror.js';
import { queryText } from '../lib/corpus.js';
import { prewarmAndReport } from '../lib/prewarm-row.js';
import { percentile, round } from '../lib/stats.js';

/** Rows per layout (`BENCH_VECTORS_N`, default the issue's 100k). */
const N = Number(process.env.BENCH_VECTORS_N ?? 100_000);
const ORGS = 100;
const QUERIES = Number(process.env.BENCH_VECTORS_QUERIES ?? 100);
const BIG = 'bench-big';
const SPREAD = 'bench-org';
/** Texts per embed call for the query embeddings (the SDK's batch endpoint). */
const EMBED_BATCH = 100;

/**
 * `BENCH_ONLY=vectors-large` (opt in; not part of the default 10-minute run): two tenant layouts in ONE
 * chat_facts table, the realistic mix: N rows in one org, and N rows spread over 100 orgs (N/100 each).
 * Both are bulk-loaded with the emulator's own embedder (768 dims) and indexed by one HNSW build; then
 * `match_documents` answers QUERIES queries per layout, timed as SQL alone and as a search through the SDK
 * (query embedding included), with recall@10 against an exact ranking of the same filter: brute force in
 * this process over the big org (an exact scan of 100k rows in PGlite takes seconds a query), SQL's
 * exact scan for a 1k-row org. The big org gets its own HNSW index (migration 015's vector_tenant_index_create)
 * and is measured through it, and again on the shared index (its own dropped inside each call's rolled-back
 * transaction: the plan before migration 015). Then the query-side HNSW levers for the big org (ef_search on its
 * own index; ef_search, iterative scan mode, max_scan_tuples on the shared one), each against the same truth.
 * `BENCH_VECTORS_DIR` keeps the loaded, indexed data dir and reuses it on the next run (no load, no build;
 * those figures then read "not re-measured").
 */
export async function vectorsLargeCase(ctx: BenchContext): Promise<void> {
  const { b } = ctx;
  const llm = createLlmClient({ apiKey: 'bench-not-a-real-key', baseUrl: b.emulatorUrl, timeoutMs: 60_000 });
  const search = createVectorSearch({ pool: b.pool, embed: (t) => llm.embed(t) });
  const tc = `6b vectors at scale (${N.toLocaleString('en')} in one org + ${N.toLocaleString('en')} over ${ORGS} orgs, 768-dim)`;

  const t0 = performance.now();
  type Loaded = { rows: number; embedMs: number; insertMs: number; indexMs: number };
  // BENCH_VECTORS_DIR: a kept data dir that already holds this exact load is reused (no load, no build).
  const reused = await b.pg.request<{ loadedAt: string; figures: { big: Loaded; spread: Loaded } } | null>({ cmd: 'loadState', n: N, orgs: ORGS });
  let loads: { big: Loaded; spread: Loaded } | undefined;
  if (reused) {
    ctx.log(`  reusing the load of ${reused.loadedAt} in BENCH_VECTORS_DIR=${process.env.BENCH_VECTORS_DIR}: load and HNSW build not re-measured`);
    // The figures of the run that loaded the dir are quoted with their date, never as this run's.
    const { big, spread } = reused.figures;
    const loadS = (big.embedMs + big.insertMs + spread.embedMs + spread.insertMs) / 1000;
    const why = `NOT re-measured: this run reused the complete load in BENCH_VECTORS_DIR; the run that loaded it (finished ${reused.loadedAt})`;
    ctx.add({ case: tc, name: 'bulk load rate (embedding + insert, index off)', value: null, unit: 'rows/s', note: `${why} measured ${round((2 * N) / loadS, 0)} rows/s` });
    ctx.add({ case: tc, name: `HNSW build over ${(2 * N).toLocaleString('en')} rows`, value: null, unit: 's', note: `${why} measured ${round(spread.indexMs / 1000, 1)} s` });
  } else {
    if (process.env.BENCH_VECTORS_DIR) await b.pg.request({ cmd: 'resetLoad', table: 'chat_facts', org: BIG });
    const big = await b.pg.request<Loaded>({ cmd: 'loadCorpus', table: 'chat_facts', from: 0, to: N, orgId: BIG, skipIndex: true }, 6 * 3600_000);
    ctx.log(`  loaded ${big.rows} rows into one org: embed ${big.embedMs} ms, insert ${big.insertMs} ms`);
    const spread = await b.pg.request<Loaded>({ cmd: 'loadCorpus', table: 'chat_facts', from: N, to: 2 * N, orgId: SPREAD, orgs: ORGS }, 6 * 3600_000);
    ctx.log(`  loaded ${spread.rows} rows over ${ORGS} orgs: embed ${spread.embedMs} ms, insert ${spread.insertMs} ms; HNSW over ${2 * N} rows built in ${spread.indexMs} ms`);
    loads = { big, spread };
    await b.pg.request({ cmd: 'markLoaded', n: N, orgs: ORGS, figures: loads });
    const loadS = (big.embedMs + big.insertMs + spread.embedMs + spread.insertMs) / 1000;
    ctx.add({ case: tc, name: 'bulk load rate (embedding + insert, index off)', value: round((2 * N) / loadS, 0), unit: 'rows/s', note: `${2 * N} rows in ${round(loadS, 1)} s; embedding alone ${round((big.embedMs + spread.embedMs) / 1000, 1)} s` });
    ctx.add({ case: tc, name: `HNSW build over ${(2 * N).toLocaleString('en')} rows`, value: round(spread.indexMs / 1000, 1), unit: 's', note: "maintenance_work_mem 1GB, the migrations' index definition (vector_cosine_ops, m 16, ef_construction 64)" });
  }

  // The big org's own HNSW index (migration 015's explicit operation, as `npm run ingest -- --tenant-index` runs it).
  // A kept data dir may hold it from an earlier run: then its build is not re-measured.
  const own = await tenantIndexName(b.pool, 'chat_facts', BIG);
  const ownExisted = (await b.pool.query<{ e: boolean }>('SELECT to_regclass($1) IS NOT NULL AS e', [own])).rows[0].e;
  let ownBuildMs: number | undefined;
  if (!ownExisted) {
    const t = performance.now();
    await createTenantIndex(b.pool, 'chat_facts', BIG, { memory: '1GB' });
    ownBuildMs = performance.now() - t;
    ctx.log(`  built ${own} (the big org's own index) in ${round(ownBuildMs / 1000, 1)} s`);
  }
  const sizes = (await b.pool.query<{ shared: string; own: string }>("SELECT pg_relation_size('chat_facts_embedding_idx') AS shared, pg_relation_size($1::regclass) AS own", [own])).rows[0];
  const mb = (bytes: string) => round(Number(bytes) / 1048576, 0);
  ctx.add({
    case: tc,
    name: `the big org's own HNSW index (vector_tenant_index_create) over ${N.toLocaleString('en')} rows: build`,
    value: ownBuildMs === undefined ? null : round(ownBuildMs / 1000, 1),
    unit: 's',
    note: `${ownBuildMs === undefined ? 'NOT re-measured: the index was already in BENCH_VECTORS_DIR (built by an earlier run). ' : ''}partial index WHERE org_id = '${BIG}', m 24, ef_construction 128 (migration 017), maintenance_work_mem 1GB; ${mb(sizes.own)} MB (the shared index over ${(2 * N).toLocaleString('en')} rows: ${mb(sizes.shared)} MB)`,
  });

  // Brute-force truth for the big org (an exact scan of 100k rows in PGlite takes seconds a query).
  const mirror = createCorpusMirror(N);

  /** The `SET` clauses `match_documents` runs with, and the ef_search its large-scope branch sizes by the index (migration 014). */
  const fnSettings = await functionSettings(b.pool, 'match_documents');
  const sized = await sizedEfSearch(b.pool, 'chat_facts_embedding_idx');
  if (sized !== undefined) fnSettings['hnsw.ef_search'] = `${sized} (sized by the index)`;
  const migrated = `ef_search ${fnSettings['hnsw.ef_search'] ?? '40'}, ${fnSettings['hnsw.iterative_scan'] ?? 'no iterative scan'}, max_scan_tuples ${fnSettings['hnsw.max_scan_tuples'] ?? '20000'}`;
  ctx.log(`  match_documents runs with ${JSON.stringify(fnSettings)}`);
  const ownEf = (await b.pool.query<{ ef: number }>('SELECT vector_tenant_ef_search($1) AS ef', [own])).rows[0].ef;
  await prewarmAndReport(ctx, tc);


  const results: Record<string, unknown> = {};
  const queryVectors: Record<string, number[][]> = {};
  /** The exact top 10 of the big org for each of its queries (the one-org layouts share their query texts). */
  let bigTruths: string[][] | undefined;
  const exactOf = (q: number[]) => mirror.nearest(q, 10).map((x) => `doc-${x.index}`);
  const ONE = 'one org';
  const SHARED = 'one org, shared index';
  // The big org through its own index (what ships once the index exists), then the same queries on the plan it
  // had before (migration 014: the shared index, its own dropped inside the call's rolled-back transaction).
  // Its own index goes first, so the shared plan is the one measured after the heap pages were read once.
  for (const layout of [ONE, SHARED, `${ORGS} orgs`] as const) {
    const big = layout === ONE || layout === SHARED;
    const texts = Array.from({ length: QUERIES }, (_, j) => queryText(j + (big ? 0 : 10_000), N));
    const orgOf = (j: number) => (big ? BIG : `${SPREAD}-${j % ORGS}`);
    const vectors: number[][] = [];
    for (let s = 0; s < texts.length; s += EMBED_BATCH) vectors.push(...(await llm.embed(texts.slice(s, s + EMBED_BATCH))));
    queryVectors[layout] = vectors;
    // The big org's exact truths before the timed calls: computing one between calls streams the 307 MB mirror
    // through the CPU caches this machine's PGlite process shares, and the next call paid for it (scratch,
    // in-process, 100 queries on this data: first-call p95 13.75 ms without, 20.77 ms right after such a scan).
    if (big && !bigTruths) bigTruths = vectors.map(exactOf);
    const sqlMs: number[] = [];
    const warmMs: number[] = [];
    const fullMs: number[] = [];
    const thresholdMs: number[] = [];
    let thresholdSame = 0;
    let thresholdRows = 0;
    let recall = 0;
    for (let j = 0; j < QUERIES; j++) {
      const vec = toVectorParam(vectors[j]);
      type Row = { metadata: { external_id: string }; similarity: number };
      const FN = "SELECT metadata, similarity FROM match_documents($1::vector, 'chat_facts', $2, $3, 10)";
      // Timed: the call alone (for SHARED, withSettings times the query without its transaction's drop and rollback).
      const fn = async (threshold = -1) => {
        if (layout === SHARED) return withSettings<Row>(b.pool, {}, FN, [vec, orgOf(j), threshold], [own]);
        const t0 = performance.now();
        const res = await b.pool.query<Row>(FN, [vec, orgOf(j), threshold]);
        return { rows: res.rows, ms: performance.now() - t0 };
      };
      const first = await fn();
      const rows = first.rows;
      sqlMs.push(first.ms);
      // The SDK search cannot run inside the transaction that hides the org's own index: not timed for SHARED.
      if (layout !== SHARED) {
        const t = performance.now();
        await search.search({ query: texts[j], orgId: orgOf(j), tables: ['chat_facts'], limit: 10, threshold: -1 });
        fullMs.push(performance.now() - t);
      }
      // The same SQL once more: its pages are now in PGlite's buffers (each 1k-row org is queried once per run,
      // so the first call reads the org cold and the SDK search after it finds them warm).
      warmMs.push((await fn()).ms);
      // vectorSearch's default threshold, which most of the top 10 miss: the rows must be those of the
      // unfiltered call that pass it (the scan is not to go on looking for more: match_documents revision 1).
      const atDefault = await fn(DEFAULT_THRESHOLD);
      thresholdMs.push(atDefault.ms);
      thresholdRows += atDefault.rows.length;
      const passing = rows.filter((r) => r.similarity >= DEFAULT_THRESHOLD).map((r) => r.metadata.external_id);
      if (JSON.stringify(atDefault.rows.map((r) => r.metadata.external_id)) === JSON.stringify(passing)) thresholdSame++;
      let truth: string[];
      if (big) {
        truth = bigTruths![j];
      } else {
        const exact = await b.pool.query<{ ext: string }>('SELECT ext FROM (SELECT external_id AS ext, embedding <=> $1::vector AS d FROM chat_facts WHERE org_id = $2 OFFSET 0) s ORDER BY d LIMIT 10', [vec, orgOf(j)]);
        truth = exact.rows.map((r) => r.ext);
      }
      const set = new Set(truth);
      recall += rows.filter((r) => set.has(r.metadata.external_id)).length / Math.max(1, set.size);
    }
    const r = {
      sqlP50: percentile(sqlMs, 50),
      sqlP95: percentile(sqlMs, 95),
      warmP50: percentile(warmMs, 50),
      warmP95: percentile(warmMs, 95),
      p50: percentile(fullMs, 50),
      p95: percentile(fullMs, 95),
      recall: recall / QUERIES,
      thresholdP50: percentile(thresholdMs, 50),
      thresholdP95: percentile(thresholdMs, 95),
      thresholdRows,
      thresholdSame,
    };
    results[layout] = r;
    const rowsPerOrg = big ? N : N / ORGS;
    const plan = layout === ONE ? `the org's own HNSW index (ef_search ${ownEf}, strict_order)` : rowsPerOrg > 2000 ? `shared HNSW index, iterative scan (${migrated})` : 'exact scan of the org (<= 2000 rows)';
    const timing = layout === SHARED ? "each call in a transaction that drops the org's own index and rolls back (the drop is not timed)" : 'each the first call for its query vector';
    ctx.log(`  ${layout}: SQL p50 ${round(r.sqlP50, 2)} / p95 ${round(r.sqlP95, 2)} ms (repeated: ${round(r.warmP50, 2)} / ${round(r.warmP95, 2)}), with the query embedding p50 ${round(r.p50, 2)} / p95 ${round(r.p95, 2)} ms, recall@10 ${round(r.recall, 3)}`);
    ctx.add({ case: tc, name: `match_documents ${layout} (${rowsPerOrg.toLocaleString('en')} rows per org), SQL alone p50 / p95`, value: `${round(r.sqlP50, 2)} / ${round(r.sqlP95, 2)}`, unit: 'ms', target: 'p95 <= 20', met: r.sqlP95 <= 20, note: `${QUERIES} queries, top 10, ${timing}; plan: ${plan}; the same call repeated right after${layout === SHARED ? '' : ' the SDK search'} (pages warm): p50 ${round(r.warmP50, 2)} / p95 ${round(r.warmP95, 2)} ms` });
    ctx.add({ case: tc, name: `match_documents ${layout} at threshold ${DEFAULT_THRESHOLD} (vectorSearch's default), SQL alone p50 / p95`, value: `${round(r.thresholdP50, 2)} / ${round(r.thresholdP95, 2)}`, unit: 'ms', target: 'p95 <= 20', met: r.thresholdP95 <= 20, note: `right after the calls above (pages warm); ${r.thresholdRows} rows passed over ${QUERIES} queries (of ${QUERIES * 10} in the top 10s); the rows equal the unfiltered top 10's passing rows in ${r.thresholdSame} of ${QUERIES} queries` });
    if (layout !== SHARED) ctx.add({ case: tc, name: `RAG search ${layout}, query embedding through the SDK included, p50 / p95`, value: `${round(r.p50, 2)} / ${round(r.p95, 2)}`, unit: 'ms', note: 'timed right after the SQL-alone call for the same vector' });
    ctx.add({ case: tc, name: `recall@10 vs exact scan of the same filter, ${layout}`, value: round(r.recall, 3), unit: '', target: '>= 0.95', met: r.recall >= 0.95, note: big ? 'truth: brute-force exact top 10 over the org in the bench process (checked against SQL\'s exact scan below)' : "truth: SQL's exact scan of the org" });
  }

  // Query-side levers for the one-org layout: the HNSW query match_documents runs for a large scope, under each
  // setting by SET LOCAL, against the same exact truth. Settings interleave per query (rotating order), so
  // warm buffers and machine load fall on every setting alike.
  if (process.env.BENCH_VECTORS_SWEEP !== '0') {
    const ANN = 'SELECT f.external_id AS ext FROM chat_facts f WHERE f.org_id = $2 AND (f.expires_at IS NULL OR f.expires_at > now()) AND 1 - (f.embedding <=> $1::vector) >= -1 ORDER BY f.embedding <=> $1::vector LIMIT 10';
    // relaxed_order may return rows slightly out of distance order, so a function using it must re-sort
    // (pgvector's README: a materialized CTE, then ORDER BY); recall@10 is a set measure either way.
    const RELAXED = `WITH r AS MATERIALIZED (SELECT f.external_id AS ext, f.embedding <=> $1::vector AS d FROM chat_facts f WHERE f.org_id = $2 AND (f.expires_at IS NULL OR f.expires_at > now()) AND 1 - (f.embedding <=> $1::vector) >= -1 ORDER BY f.embedding <=> $1::vector LIMIT 10) SELECT ext FROM r ORDER BY d`;
    // The threshold as a qual makes every tuple the scan visits detoast its 3 KB embedding to evaluate it; the
    // rows passing it are a prefix of the distance order, so applying it after the LIMIT returns the same rows.
    const NO_QUAL = ANN.replace(' AND 1 - (f.embedding <=> $1::vector) >= -1', '');
    // The shared index's levers run with the org's own index dropped inside their rolled-back transaction.
    const lever = (ef: number, mode: 'off' | 'strict_order' | 'relaxed_order', mst = 20_000, qual = true) => ({
      label: `shared index, ef_search ${ef}, ${mode === 'off' ? 'no iterative scan' : mode}${mode === 'off' ? '' : `, max_scan_tuples ${mst}`}${qual ? '' : ', threshold not a scan qual'}`,
      settings: { enable_sort: 'off', 'hnsw.ef_search': String(ef), 'hnsw.iterative_scan': mode, 'hnsw.max_scan_tuples': String(mst) },
      sql: mode === 'relaxed_order' ? RELAXED : qual ? ANN : NO_QUAL,
      hide: [own],
      orgParam: true,
      ms: [] as number[],
      recall: 0,
    });
    // The org's own index: the query match_documents EXECUTEs for it (migrations 015, 017), the org a literal and
    // the order by the index's expression.
    const ownOrder = (await b.pool.query<{ o: string }>("SELECT vector_tenant_order_by($1, 'f') AS o", [own])).rows[0].o;
    const OWN = ANN.replace('f.org_id = $2', `f.org_id = '${BIG}'`).replace('ORDER BY f.embedding', `ORDER BY ${ownOrder}`);
    const ownLever = (ef: number) => ({
      label: `own index, ef_search ${ef}, strict_order`,
      settings: { enable_sort: 'off', 'hnsw.ef_search': String(ef), 'hnsw.iterative_scan': 'strict_order', 'hnsw.max_scan_tuples': '20000' },
      sql: OWN,
      hide: [] as string[],
      orgParam: false,
      ms: [] as number[],
      recall: 0,
    });
    const levers = [
      ownLever(40),
      ownLever(64),
      ownLever(100),
      ownLever(200),
      lever(100, 'off'),
      lever(100, 'strict_order'),
      lever(200, 'strict_order'),
      lever(300, 'strict_order'),
      lever(400, 'strict_order'),
      lever(100, 'relaxed_order'),
      lever(200, 'relaxed_order'),
      lever(400, 'relaxed_order'),
      lever(200, 'strict_order', 1000),
      lever(200, 'strict_order', 100_000),
      lever(400, 'strict_order', 1000),
      lever(200, 'strict_order', 20_000, false),
      lever(400, 'strict_order', 20_000, false),
    ];
    const vectors = queryVectors['one org'];
    const exactSqlMs: number[] = [];
    let agree = 0;
    let checked = 0;
    for (let j = 0; j < QUERIES; j++) {
      const vec = toVectorParam(vectors[j]);
      const truth = bigTruths![j];
      const set = new Set(truth);
      for (let k = 0; k < levers.length; k++) {
        const l = levers[(j + k) % levers.length];
        const { rows, ms } = await withSettings<{ ext: string }>(b.pool, l.settings, l.sql, l.orgParam ? [vec, BIG] : [vec], l.hide);
        l.ms.push(ms);
        l.recall += rows.filter((r) => set.has(r.ext)).length / Math.max(1, set.size);
      }
      if (j < 3) {
        // SQL's own exact scan of the same filter (OFFSET 0 keeps it off the index): checks the brute-force truth, and times the alternative plan.
        const t = performance.now();
        const exact = await b.pool.query<{ ext: string }>('SELECT ext FROM (SELECT external_id AS ext, embedding <=> $1::vector AS d FROM chat_facts WHERE org_id = $2 OFFSET 0) s ORDER BY d LIMIT 10', [vec, BIG]);
        exactSqlMs.push(performance.now() - t);
        agree += exact.rows.filter((r) => set.has(r.ext)).length;
        checked += 10;
      }
    }
    const sweep = levers.map((l) => ({ label: l.label, hidden: l.hide.length > 0, recall: l.recall / QUERIES, sqlP50: percentile(l.ms, 50), sqlP95: percentile(l.ms, 95) }));
    for (const x of sweep) {
      ctx.log(`  one org, ${x.label}: recall@10 ${round(x.recall, 3)}, SQL p50 ${round(x.sqlP50, 2)} / p95 ${round(x.sqlP95, 2)} ms`);
      ctx.add({
        case: tc,
        name: `one org lever: ${x.label}; recall@10, SQL p50 / p95`,
        value: `${round(x.recall, 3)}; ${round(x.sqlP50, 2)} / ${round(x.sqlP95, 2)}`,
        unit: 'ms',
        target: 'recall >= 0.95, p95 <= 20',
        met: x.recall >= 0.95 && x.sqlP95 <= 20,
        note: `match_documents' large-scope query with enable_sort off, settings by SET LOCAL, query timed alone (no scope count); ${QUERIES} queries, interleaved with the other levers${x.hidden ? "; the org's own index dropped in the query's rolled-back transaction" : ''}`,
      });
    }
    ctx.add({
      case: tc,
      name: "one org: SQL's exact scan of the same filter (the alternative plan)",
      value: round(percentile(exactSqlMs, 50), 0),
      unit: 'ms (median of 3)',
      note: `the brute-force truth agreed with it on ${agree} of ${checked} neighbours`,
    });
    results.levers = { sweep, exactSqlMs, exactAgrees: agree / Math.max(1, checked) };
  }
  ctx.details.vectorsLarge = { n: N, orgs: ORGS, queries: QUERIES, ...(reused ? { reusedLoad: reused } : { loads }), results, totalS: round((performance.now() - t0) / 1000, 1) };
}
