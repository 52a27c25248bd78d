import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { prewarmVectorIndexesAt } from '../src/shared/infra/db/embedded-prewarm.js';
import type { EmbeddedPostgres } from '../src/shared/infra/db/embedded-postgres.js';
import { toVectorSql } from '../src/shared/knowledge/embedding.js';
import { hashEmbedOne } from './helpers/hash-embed.js';
import { freshEmbeddedPostgres } from './helpers/fresh-embedded.js';

const ROWS = 500;

/** Shared-buffer blocks a query read from outside the cache, from EXPLAIN (ANALYZE, BUFFERS). */
async function blocksRead(db: EmbeddedPostgres, sql: string): Promise<{ read: number; hit: number; plan: string }> {
  // A few hundred rows: the planner would sort them all instead of walking the index.
  await db.db.exec('SET enable_seqscan = off');
  const { rows } = await db.db.query<{ 'QUERY PLAN': string }>(`EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF) ${sql}`);
  const plan = rows.map((r) => r['QUERY PLAN']).join('\n');
  // The top node's line counts its children's blocks too.
  const line = plan.match(/Buffers: shared([^\n]*)/)?.[1] ?? '';
  const count = (what: string) => Number(line.match(new RegExp(`${what}=(\\d+)`))?.[1] ?? 0);
  return { read: count('read'), hit: count('hit'), plan };
}

describe('embedded PGlite prewarm of vector indexes', () => {
  const dir = mkdtempSync(join(tmpdir(), 'agentq-prewarm-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('reads the HNSW indexes that fit into shared_buffers at start, an org\'s own first, so the first query reads no index page from disk', async () => {
    const first = await freshEmbeddedPostgres({ dataDir: dir });
    try {
      await first.db.exec(`CREATE TABLE docs (id int PRIMARY KEY, org text NOT NULL, embedding vector(768) NOT NULL)`);
      for (let s = 0; s < ROWS; s += 250) {
        const values = Array.from({ length: 250 }, (_, k) => `(${s + k}, '${(s + k) % 3 === 0 ? 'big' : 'other'}', '${toVectorSql(hashEmbedOne(`document ${s + k} about topic ${(s + k) % 17}`))}')`);
        await first.db.exec(`INSERT INTO docs VALUES ${values.join(', ')}`);
      }
      await first.db.exec(`CREATE INDEX docs_embedding_idx ON docs USING hnsw (embedding vector_cosine_ops)`);
      // Named like vector_tenant_index_create's indexes: read before the shared one.
      await first.db.exec(`CREATE INDEX docs_org_0123456789abcdef_hnsw ON docs USING hnsw (embedding vector_cosine_ops) WHERE org = 'big'`);
    } finally {
      await first.stop();
    }

    const query = `SELECT id FROM docs ORDER BY embedding <=> '${toVectorSql(hashEmbedOne('document 7 about topic 7'))}' LIMIT 10`;
    // A restart without prewarm: the walk reads its index pages from disk.
    const cold = await freshEmbeddedPostgres({ dataDir: dir });
    let coldRead: number;
    try {
      const r = await blocksRead(cold, query);
      expect(r.plan).toMatch(/Index Scan using docs_embedding_idx/);
      coldRead = r.read;
      expect(coldRead).toBeGreaterThan(20);
    } finally {
      await cold.stop();
    }

    const warm = await freshEmbeddedPostgres({ dataDir: dir, prewarm: true });
    try {
      const report = await warm.prewarmed!;
      expect(report.read.map((r) => r.index)).toEqual(['docs_org_0123456789abcdef_hnsw', 'docs_embedding_idx']);
      expect(report.skipped).toEqual([]);
      for (const r of report.read) expect(r.pages).toBeGreaterThan(1);
      const r = await blocksRead(warm, query);
      expect(r.plan).toMatch(/Index Scan using docs_embedding_idx/);
      // Every index block the walk touches is cached; at most the 10 heap rows' pages are read.
      expect(r.read).toBeLessThanOrEqual(10);
      expect(r.read).toBeLessThan(coldRead);
    } finally {
      await warm.stop();
    }
  });

  it('leaves out an index that would pass the budget, and says so', async () => {
    // 16MB of shared_buffers: a 0.75 budget of 1,536 pages; the two indexes above need more than a tiny share.
    const db = await freshEmbeddedPostgres({ dataDir: dir, sharedBuffers: '16MB' });
    try {
      const report = await prewarmVectorIndexesAt(db.url, { budgetShare: 0.01 });
      expect(report.budgetPages).toBe(Math.floor(2048 * 0.01));
      expect(report.read).toEqual([]);
      expect(report.skipped.map((s) => s.index).sort()).toEqual(['docs_embedding_idx', 'docs_org_0123456789abcdef_hnsw']);
    } finally {
      await db.stop();
    }
  });
});
