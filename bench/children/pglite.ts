/**
 * Embedded PGlite in its own process, served over the Postgres wire protocol like a database server, so
 * its WASM work does not land on the measured worker's event loop. Besides serving SQL it bulk-loads the
 * vector corpus in-process (`loadCorpus`): inserting through the socket with the HNSW index in place
 * costs ~18 ms a row in PGlite, which would not fit the bench's budget.
 */
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startEmbeddedPostgres } from '../../src/shared/infra/db/embedded-postgres.js';
import { prewarmVectorIndexesAt } from '../../src/shared/infra/db/embedded-prewarm.js';
import { embedText } from '../../dev/gemini-emulator/embedder.js';
import { serveParent, toParent } from '../lib/child.js';
import { corpusText, vectorLiteral } from '../lib/corpus.js';

/**
 * `BENCH_VECTORS_DIR` (opt in, for experiments on the vectors-large case): a data dir that outlives the run,
 * so a loaded and indexed corpus (23 min at 2 x 100k) is reused. Otherwise a temp dir that dies with us.
 */
const keptDir = process.env.BENCH_VECTORS_DIR ? process.env.BENCH_VECTORS_DIR : undefined;
if (keptDir) mkdirSync(keptDir, { recursive: true });
const dir = keptDir ?? mkdtempSync(join(tmpdir(), 'agentq-bench-pg-'));
// BENCH_PG_SHARED_BUFFERS (opt in, e.g. 1GB): PGlite's shared_buffers instead of its default 128MB (the
// product's PGLITE_SHARED_BUFFERS). No prewarm at start: the vectors-large case asks for it (`prewarm`) once
// its indexes exist, and times it.
const pg = await startEmbeddedPostgres({ dataDir: dir, ...(process.env.BENCH_PG_SHARED_BUFFERS ? { sharedBuffers: process.env.BENCH_PG_SHARED_BUFFERS } : {}) });

/**
 * The record of a complete vectors-large load in a kept data dir: written only after the last row, the
 * index build and ANALYZE, so a load that died half-way leaves no row and the next run loads again.
 * One marker table per loaded table (vectors-large: chat_facts; vectors-large-cache: semantic_cache).
 */
const MARKERS = { chat_facts: 'bench_vectors_load', semantic_cache: 'bench_vectors_cache_load' } as const;
type LoadedTable = keyof typeof MARKERS;
const marker = (table: LoadedTable) => `CREATE TABLE IF NOT EXISTS ${MARKERS[table]} (
  n int NOT NULL, orgs int NOT NULL, loaded_at timestamptz NOT NULL DEFAULT now(), figures jsonb NOT NULL,
  PRIMARY KEY (n, orgs))`;

interface LoadState {
  n: number;
  orgs: number;
  table?: LoadedTable;
}

/** The complete load of this shape in the data dir (its figures and when it was measured), or null. */
async function loadState(r: LoadState) {
  const table = r.table ?? 'chat_facts';
  await pg.db.exec(marker(table));
  const { rows } = await pg.db.query<{ loaded_at: Date; figures: unknown; rows: number; indexed: boolean }>(
    `SELECT m.loaded_at, m.figures,
            -- Cache entries live a day (loadCorpus): a dir whose entries expired loads again.
            (SELECT count(*)::int FROM ${table}${table === 'semantic_cache' ? ' WHERE expires_at > now()' : ''}) AS rows,
            -- chat_facts' load ends with the shared index; semantic_cache's builds none (its case says why).
            ${table === 'chat_facts' ? "to_regclass('chat_facts_embedding_idx') IS NOT NULL" : 'true'} AS indexed
     FROM ${MARKERS[table]} m WHERE m.n = $1 AND m.orgs = $2`,
    [r.n, r.orgs],
  );
  const m = rows[0];
  // The marker and the rows must agree: a table truncated by hand or an index dropped means load again.
  if (!m || m.rows !== 2 * r.n || !m.indexed) return null;
  return { loadedAt: new Date(m.loaded_at).toISOString(), figures: m.figures };
}

/**
 * Empties what a previous, incomplete load left, before loading again; `org`'s own index goes too (rows
 * inserted under an HNSW index cost ~18 ms each in PGlite).
 */
async function resetLoad(r: { table?: LoadedTable; org?: string }) {
  const table = r.table ?? 'chat_facts';
  await pg.db.exec(marker(table));
  if (r.org) await pg.db.query('SELECT vector_tenant_index_drop($1, $2)', [table, r.org]);
  await pg.db.exec(`TRUNCATE ${MARKERS[table]}; DROP INDEX IF EXISTS ${table}_embedding_idx; TRUNCATE ${table} CASCADE`);
}

async function markLoaded(r: LoadState & { figures: unknown }) {
  await pg.db.query(`INSERT INTO ${MARKERS[r.table ?? 'chat_facts']} (n, orgs, figures) VALUES ($1, $2, $3::jsonb)`, [r.n, r.orgs, JSON.stringify(r.figures)]);
  // On disk before anyone relies on it, whatever happens to this process next.
  await pg.db.exec('CHECKPOINT');
}

/** The same index definitions as migrations/003_knowledge.sql and 004_semantic_cache.sql. */
const INDEX: Record<string, string> = {
  chat_facts: 'CREATE INDEX chat_facts_embedding_idx ON chat_facts USING hnsw (embedding vector_cosine_ops)',
  semantic_cache: 'CREATE INDEX semantic_cache_embedding_idx ON semantic_cache USING hnsw (embedding vector_cosine_ops)',
};

interface LoadRequest {
  table: 'chat_facts' | 'semantic_cache';
  from: number;
  to: number;
  orgId: string;
  scope?: { agent: string; action: string; model: string; promptVersion: number };
  /** Spread the rows over this many orgs (`${orgId}-${i % orgs}`) instead of all in `orgId`. */
  orgs?: number;
  /** Leave the HNSW index off after the load (another load follows; the last one builds it). */
  skipIndex?: boolean;
}

async function loadCorpus(r: LoadRequest) {
  const started = performance.now();
  await pg.db.exec(`DROP INDEX IF EXISTS ${r.table}_embedding_idx`);
  let embedMs = 0;
  const batch = 250;
  for (let start = r.from; start < r.to; start += batch) {
    const params: unknown[] = [];
    const tuples: string[] = [];
    for (let i = start; i < Math.min(r.to, start + batch); i++) {
      const text = corpusText(i);
      const t = performance.now();
      const vec = vectorLiteral(embedText(text, 768));
      embedMs += performance.now() - t;
      if (r.table === 'chat_facts') {
        params.push(`doc-${i}`, r.orgs ? `${r.orgId}-${i % r.orgs}` : r.orgId, text, vec);
        const b = params.length - 4;
        tuples.push(`($${b + 1}, $${b + 2}, $${b + 3}, $${b + 4}::vector)`);
      } else {
        const s = r.scope!;
        params.push(r.orgs ? `${r.orgId}-${i % r.orgs}` : r.orgId, s.agent, s.action, s.model, s.promptVersion, text, vec, JSON.stringify({ doc: i }));
        const b = params.length - 8;
        tuples.push(`($${b + 1}, $${b + 2}, $${b + 3}, $${b + 4}, $${b + 5}, $${b + 6}, $${b + 7}::vector, $${b + 8}::jsonb, now() + interval '1 day')`);
      }
    }
    const sql =
      r.table === 'chat_facts'
        ? `INSERT INTO chat_facts (external_id, org_id, content, embedding) VALUES ${tuples.join(', ')}`
        : `INSERT INTO semantic_cache (org_id, agent, action, model, prompt_version, query, embedding, response, expires_at) VALUES ${tuples.join(', ')}`;
    await pg.db.query(sql, params);
  }
  const inserted = performance.now();
  if (r.skipIndex) return { rows: r.to - r.from, embedMs: Math.round(embedMs), insertMs: Math.round(inserted - started - embedMs), indexMs: 0 };
  // The graph of 100k 768-dim vectors does not fit the default 64 MB, and a build that spills is far slower.
  await pg.db.exec(`SET maintenance_work_mem = '1GB'`);
  await pg.db.exec(INDEX[r.table]);
  await pg.db.exec('RESET maintenance_work_mem');
  const indexed = performance.now();
  await pg.db.exec(`ANALYZE ${r.table}`);
  return { rows: r.to - r.from, embedMs: Math.round(embedMs), insertMs: Math.round(inserted - started - embedMs), indexMs: Math.round(indexed - inserted) };
}

serveParent(async (msg) => {
  if (msg.cmd === 'loadCorpus') return loadCorpus(msg as LoadRequest);
  if (msg.cmd === 'loadState') return keptDir ? loadState(msg as LoadState) : null;
  if (msg.cmd === 'resetLoad') return resetLoad(msg as { table?: LoadedTable; org?: string });
  // What the embedded database does at start (PGLITE_PREWARM), on demand: once the indexes exist, as at a restart.
  if (msg.cmd === 'prewarm') return prewarmVectorIndexesAt(pg.url);
  if (msg.cmd === 'markLoaded') return keptDir ? markLoaded(msg as LoadState & { figures: unknown }) : null;
  throw new Error(`unknown command ${msg.cmd}`);
});
// However this process ends (SIGTERM from the bench, or the bench gone), the temp data dir goes with it;
// a kept dir is closed cleanly instead, so the next run can open it.
if (!keptDir) process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
process.on('SIGTERM', () => void pg.stop().finally(() => process.exit(0)));
if (keptDir) {
  process.removeAllListeners('disconnect');
  process.on('disconnect', () => void pg.stop().finally(() => process.exit(0)));
}
toParent({ ready: { url: pg.url } });
