/**
 * Embedded PGlite in its own process, served over the Postgres wire protocol like a database server, so
 * its WASM work does not land on the measured worker's event loop. Besides serving SQL it bulk-loads the
 * vector corpus in-process (`loadCorpus`): inserting through the socket with the HNSW index in place
 * costs ~18 ms a row in PGlite, which would not fit the bench's budget.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startEmbeddedPostgres } from '../../src/shared/infra/db/embedded-postgres.js';
import { embedText } from '../../dev/gemini-emulator/embedder.js';
import { serveParent, toParent } from '../lib/child.js';
import { corpusText, vectorLiteral } from '../lib/corpus.js';

const dir = mkdtempSync(join(tmpdir(), 'agentq-bench-pg-'));
const pg = await startEmbeddedPostgres({ dataDir: dir });

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
        params.push(r.orgId, s.agent, s.action, s.model, s.promptVersion, text, vec, JSON.stringify({ doc: i }));
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
  throw new Error(`unknown command ${msg.cmd}`);
});
// However this process ends (SIGTERM from the bench, or the bench gone), the temp data dir goes with it.
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
process.on('SIGTERM', () => void pg.stop().finally(() => process.exit(0)));
toParent({ ready: { url: pg.url } });
