import pg from 'pg';
import { startEmbeddedPostgres } from './src/shared/db/embedded-postgres.js';
const e = await startEmbeddedPostgres();
const pools = Array.from({ length: 4 }, () => new pg.Pool({ connectionString: e.url, max: 4 }));
await pools[0].query('create table if not exists st (k int, v text)');
let bad = 0, errs = 0; const msgs = new Set<string>();
const t0 = Date.now();
await Promise.all(pools.map(async (pool, p) => {
  for (let round = 0; round < 30; round++) {
    await Promise.all(Array.from({ length: 6 }, async (_, i) => {
      const n = p * 1000 + round * 10 + i;
      try {
        if (i === 0) {
          const c = await pool.connect();
          try { await c.query('BEGIN'); await c.query('insert into st values ($1, $2)', [n, 'x']); await c.query('COMMIT'); } finally { c.release(); }
        } else {
          const q = i % 2 ? `select $1::int as v, $2::text as t` : `select $1::int + 0 as v, 1 as z`;
          const { rows } = await pool.query(q, i % 2 ? [n, 'a'] : [n]);
          if (rows[0].v !== n) bad++;
        }
      } catch (err) { errs++; msgs.add(String((err as Error).message)); }
    }));
  }
}));
console.log({ bad, errs, msgs: [...msgs], ms: Date.now() - t0 });
await Promise.all(pools.map((p) => p.end())); await e.stop();
