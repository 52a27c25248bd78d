import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startEmbeddedPostgres } from '../../src/shared/db/embedded-postgres.ts';
import { embedText } from '../../src/shared/gemini/embedder.ts';
import pg from 'pg';
const dir = mkdtempSync(join(tmpdir(), 'pgbench-'));
const t0 = performance.now();
const pgh = await startEmbeddedPostgres({ dataDir: dir });
console.log('start', performance.now() - t0);
const words = 'market growth revenue churn hiring robotics logistics fintech pricing seed series runway burn customer acquisition retention enterprise sales channel partner regulation compliance security cloud data model inference latency supply chain warehouse fleet battery solar health clinic insurance lending payments fraud identity privacy marketplace creator subscription'.split(' ');
let seed = 1; const rnd = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
const text = () => Array.from({ length: 8 }, () => words[Math.floor(rnd() * words.length)]).join(' ');
const N = 5000;
let t = performance.now();
const vecs = Array.from({ length: N }, () => embedText(text()));
console.log('embed', N, performance.now() - t);
await pgh.db.exec('CREATE TABLE t (id serial primary key, org text, embedding vector(768))');
// path A: in-process db.query multi-row
t = performance.now();
for (let i = 0; i < N; i += 250) {
  const batch = vecs.slice(i, i + 250);
  const params: string[] = []; const tuples = batch.map((v, j) => { params.push('[' + v.map((x) => x.toFixed(6)).join(',') + ']'); return `('o', $${j + 1}::vector)`; });
  await pgh.db.query(`INSERT INTO t (org, embedding) VALUES ${tuples.join(',')}`, params);
}
console.log('insert in-proc', performance.now() - t);
t = performance.now();
await pgh.db.exec('CREATE INDEX ON t USING hnsw (embedding vector_cosine_ops)');
console.log('index build', performance.now() - t);
// path B: socket insert with index present
const pool = new pg.Pool({ connectionString: pgh.url, max: 2 });
await pool.query('CREATE TABLE t2 (id serial primary key, org text, embedding vector(768))');
await pool.query('CREATE INDEX ON t2 USING hnsw (embedding vector_cosine_ops)');
t = performance.now();
for (let i = 0; i < N; i += 250) {
  const batch = vecs.slice(i, i + 250);
  const params: string[] = []; const tuples = batch.map((v, j) => { params.push('[' + v.map((x) => x.toFixed(6)).join(',') + ']'); return `('o', $${j + 1}::vector)`; });
  await pool.query(`INSERT INTO t2 (org, embedding) VALUES ${tuples.join(',')}`, params);
}
console.log('insert socket with index', performance.now() - t);
const v = await pool.query(`SELECT extversion FROM pg_extension WHERE extname='vector'`); console.log(v.rows);
t = performance.now();
for (let i = 0; i < 50; i++) await pool.query('SELECT id FROM t ORDER BY embedding <=> $1::vector LIMIT 10', ['[' + embedText(text()).join(',') + ']']);
console.log('50 queries', performance.now() - t);
await pool.end(); await pgh.stop();
