import { createLlmClient } from '../../src/shared/infra/llm/llm-client.js';
import { toVectorSql } from '../../src/shared/knowledge/embedding.js';
import { createVectorSearch } from '../../src/shared/knowledge/vector-search.js';
import { embedText } from '../../dev/gemini-emulator/emulator.js';
import type { BenchContext } from '../lib/context.js';
import { corpusText, queryText } from '../lib/corpus.js';
import { percentile, round } from '../lib/stats.js';

/** Rows per layout (`BENCH_VECTORS_N`, default the 100k). */
const N = Number(process.env.BENCH_VECTORS_N ?? 100_000);
const ORGS = 100;
const QUERIES = Number(process.env.BENCH_VECTORS_QUERIES ?? 100);
const BIG = 'bench-big';
const SPREAD = 'bench-org';
/** Texts per embed call for the query embeddings (the SDK's batch endpoint). */
const EMBED_BATCH = 100;
const DIMS = 768;

/**
 * `BENCH_ONLY=vectors-large` (opt in; not part of the default 10-minute run): two tenant layouts in ONE
 * chat_facts table, the realistic mix: N rows in one org, and N rows spread over 100 orgs (N/100 each).
 * Both are bulk-loaded with the emulator's own embedder (768 dims) and indexed by one HNSW build; then
 * `match_documents` answers QUERIES queries per layout, timed as SQL alone and as a search through the SDK
 * (query embedding included), with recall@10 against an exact ranking of the same filter: brute force in
 * this process over the big org (an exact scan of 100k rows in PGlite takes seconds a query), SQL's
 * exact scan for a 1k-row org.
 */
export async function vectorsLargeCase(ctx: BenchContext): Promise<void> {
  const { b } = ctx;
  const llm = createLlmClient({ apiKey: 'bench-not-a-real-key', baseUrl: b.emulatorUrl, timeoutMs: 60_000 });
  const search = createVectorSearch({ pool: b.pool, embed: (t) => llm.embed(t) });
  const tc = `6b vectors at scale (${N.toLocaleString('en')} in one org + ${N.toLocaleString('en')} over ${ORGS} orgs, 768-dim)`;

  const t0 = performance.now();
  const big = await b.pg.request<{ rows: number; embedMs: number; insertMs: number }>({ cmd: 'loadCorpus', table: 'chat_facts', from: 0, to: N, orgId: BIG, skipIndex: true }, 6 * 3600_000);
  ctx.log(`  loaded ${big.rows} rows into one org: embed ${big.embedMs} ms, insert ${big.insertMs} ms`);
  const spread = await b.pg.request<{ rows: number; embedMs: number; insertMs: number; indexMs: number }>(
    { cmd: 'loadCorpus', table: 'chat_facts', from: N, to: 2 * N, orgId: SPREAD, orgs: ORGS },
    6 * 3600_000,
  );
  ctx.log(`  loaded ${spread.rows} rows over ${ORGS} orgs: embed ${spread.embedMs} ms, insert ${spread.insertMs} ms; HNSW over ${2 * N} rows built in ${spread.indexMs} ms`);
  const loadS = (big.embedMs + big.insertMs + spread.embedMs + spread.insertMs) / 1000;
  ctx.add({ case: tc, name: 'bulk load rate (embedding + insert, index off)', value: round((2 * N) / loadS, 0), unit: 'rows/s', note: `${2 * N} rows in ${round(loadS, 1)} s; embedding alone ${round((big.embedMs + spread.embedMs) / 1000, 1)} s` });
  ctx.add({ case: tc, name: `HNSW build over ${(2 * N).toLocaleString('en')} rows`, value: round(spread.indexMs / 1000, 1), unit: 's', note: "maintenance_work_mem 1GB, the migrations' index definition (vector_cosine_ops, m 16, ef_construction 64)" });

  // Brute-force truth for the big org: the corpus vectors as stored (6 decimals), normalised.
  const mirror = new Float32Array(N * DIMS);
  for (let i = 0; i < N; i++) {
    const v = embedText(corpusText(i), DIMS);
    let n = 0;
    for (let d = 0; d < DIMS; d++) n += Number(v[d].toFixed(6)) ** 2;
    const inv = 1 / (Math.sqrt(n) || 1);
    for (let d = 0; d < DIMS; d++) mirror[i * DIMS + d] = Number(v[d].toFixed(6)) * inv;
  }
  const exactBig = (q: number[]): string[] => {
    const best: Array<{ i: number; s: number }> = [];
    for (let i = 0; i < N; i++) {
      let dot = 0;
      for (let d = 0; d < DIMS; d++) dot += q[d] * mirror[i * DIMS + d];
      if (best.length < 10 || dot > best[best.length - 1].s) {
        best.push({ i, s: dot });
        best.sort((a, c) => c.s - a.s);
        if (best.length > 10) best.pop();
      }
    }
    return best.map((x) => `doc-${x.i}`);
  };

  const results: Record<string, unknown> = {};
  for (const layout of ['one org', `${ORGS} orgs`] as const) {
    const texts = Array.from({ length: QUERIES }, (_, j) => queryText(j + (layout === 'one org' ? 0 : 10_000), N));
    const orgOf = (j: number) => (layout === 'one org' ? BIG : `${SPREAD}-${j % ORGS}`);
    const vectors: number[][] = [];
    for (let s = 0; s < texts.length; s += EMBED_BATCH) vectors.push(...(await llm.embed(texts.slice(s, s + EMBED_BATCH))));
    const sqlMs: number[] = [];
    const fullMs: number[] = [];
    let recall = 0;
    for (let j = 0; j < QUERIES; j++) {
      const vec = toVectorSql(vectors[j]);
      let t = performance.now();
      const { rows } = await b.pool.query<{ metadata: { external_id: string } }>("SELECT metadata FROM match_documents($1::vector, 'chat_facts', $2, -1, 10)", [vec, orgOf(j)]);
      sqlMs.push(performance.now() - t);
      t = performance.now();
      await search.search({ query: texts[j], orgId: orgOf(j), tables: ['chat_facts'], limit: 10, threshold: -1 });
      fullMs.push(performance.now() - t);
      let truth: string[];
      if (layout === 'one org') {
        const q = vectors[j];
        const qn = Math.sqrt(q.reduce((a, x) => a + x * x, 0)) || 1;
        truth = exactBig(q.map((x) => x / qn));
      } else {
        const exact = await b.pool.query<{ ext: string }>('SELECT ext FROM (SELECT external_id AS ext, embedding <=> $1::vector AS d FROM chat_facts WHERE org_id = $2 OFFSET 0) s ORDER BY d LIMIT 10', [vec, orgOf(j)]);
        truth = exact.rows.map((r) => r.ext);
      }
      const set = new Set(truth);
      recall += rows.filter((r) => set.has(r.metadata.external_id)).length / Math.max(1, set.size);
    }
    const r = { sqlP50: percentile(sqlMs, 50), sqlP95: percentile(sqlMs, 95), p50: percentile(fullMs, 50), p95: percentile(fullMs, 95), recall: recall / QUERIES };
    results[layout] = r;
    const rowsPerOrg = layout === 'one org' ? N : N / ORGS;
    const plan = rowsPerOrg > 2000 ? 'HNSW iterative scan' : 'exact scan of the org (<= 2000 rows)';
    ctx.log(`  ${layout}: SQL p50 ${round(r.sqlP50, 2)} / p95 ${round(r.sqlP95, 2)} ms, with the query embedding p50 ${round(r.p50, 2)} / p95 ${round(r.p95, 2)} ms, recall@10 ${round(r.recall, 3)}`);
    ctx.add({ case: tc, name: `match_documents ${layout} (${rowsPerOrg.toLocaleString('en')} rows per org), SQL alone p50 / p95`, value: `${round(r.sqlP50, 2)} / ${round(r.sqlP95, 2)}`, unit: 'ms', target: 'p95 <= 20', met: r.sqlP95 <= 20, note: `${QUERIES} queries, top 10; plan: ${plan}` });
    ctx.add({ case: tc, name: `RAG search ${layout}, query embedding through the SDK included, p50 / p95`, value: `${round(r.p50, 2)} / ${round(r.p95, 2)}`, unit: 'ms' });
    ctx.add({ case: tc, name: `recall@10 vs exact scan of the same filter, ${layout}`, value: round(r.recall, 3), unit: '', target: '>= 0.95', met: r.recall >= 0.95 });
  }
  ctx.details.vectorsLarge = { n: N, orgs: ORGS, queries: QUERIES, loads: { big, spread }, results, totalS: round((performance.now() - t0) / 1000, 1) };
}
