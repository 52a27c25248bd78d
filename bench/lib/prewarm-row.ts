import type { PrewarmReport } from '../../src/shared/infra/db/embedded-prewarm.js';
import type { BenchContext } from './context.js';
import { round } from './stats.js';

/**
 * The state a deployment's database is in after any restart (PGLITE_PREWARM, on by default): the HNSW indexes
 * that fit in 3/4 of shared_buffers read in, an org's own first; reported as a row of case `tc`, with the
 * shared_buffers the run had. BENCH_PG_PREWARM=0 measures without it.
 */
export async function prewarmAndReport(ctx: BenchContext, tc: string): Promise<void> {
  const { b } = ctx;
  const buffers = (await b.pool.query<{ shared_buffers: string }>('SHOW shared_buffers')).rows[0].shared_buffers;
  ctx.add({ case: tc, name: "PGlite's shared_buffers in this run", value: buffers, unit: '', note: process.env.BENCH_PG_SHARED_BUFFERS ? 'set by BENCH_PG_SHARED_BUFFERS (the product: PGLITE_SHARED_BUFFERS)' : "PGlite's default" });
  const name = 'prewarm of the HNSW indexes (as at every start, PGLITE_PREWARM)';
  if (process.env.BENCH_PG_PREWARM === '0') {
    ctx.add({ case: tc, name, value: null, unit: 's', note: 'off in this run (BENCH_PG_PREWARM=0): the first calls read the index from disk' });
    return;
  }
  const pre = await b.pg.request<PrewarmReport>({ cmd: 'prewarm' }, 600_000);
  const mbOf = (pages: number) => round((pages * 8) / 1024, 0);
  ctx.log(`  prewarm: ${JSON.stringify(pre)}`);
  ctx.add({
    case: tc,
    name,
    value: round(pre.ms / 1000, 1),
    unit: 's',
    note: `read ${pre.read.map((r) => `${r.index} (${mbOf(r.pages)} MB)`).join(', ') || 'nothing'}; left out (over the ${mbOf(pre.budgetPages)} MB budget, 3/4 of shared_buffers): ${pre.skipped.map((r) => `${r.index} (${mbOf(r.pages)} MB)`).join(', ') || 'none'}`,
  });
}
