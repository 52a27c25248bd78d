import { PGlite } from '@electric-sql/pglite';
import { vector } from '@electric-sql/pglite-pgvector';
import { embedText } from '../../src/shared/gemini/embedder.ts';
const t0 = performance.now();
const db = await PGlite.create(undefined, { extensions: { vector } });
await db.exec('CREATE EXTENSION IF NOT EXISTS vector');
console.log('start mem', performance.now() - t0);
const words = 'market growth revenue churn hiring robotics logistics fintech pricing seed series runway burn customer acquisition retention enterprise sales channel partner regulation compliance security cloud data model inference latency supply chain warehouse fleet battery solar health clinic insurance lending payments fraud identity privacy marketplace creator subscription'.split(' ');
let seed = 1; const rnd = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
const text = () => Array.from({ length: 8 }, () => words[Math.floor(rnd() * words.length)]).join(' ');
const N = Number(process.argv[2] ?? 10000);
await db.exec('CREATE TABLE t (id serial primary key, org text, embedding vector(768))');
let t = performance.now();
for (let i = 0; i < N; i += 500) {
  const params: string[] = []; const tuples: string[] = [];
  for (let j = 0; j < 500 && i + j < N; j++) { params.push('[' + embedText(text()).map((x) => x.toFixed(6)).join(',') + ']'); tuples.push(`('o', $${j + 1}::vector)`); }
  await db.query(`INSERT INTO t (org, embedding) VALUES ${tuples.join(',')}`, params);
}
console.log('gen+insert', N, performance.now() - t);
await db.exec(`SET maintenance_work_mem = '${process.argv[3] ?? '64MB'}'`);
t = performance.now();
await db.exec('CREATE INDEX ON t USING hnsw (embedding vector_cosine_ops)');
console.log('index build', performance.now() - t);
