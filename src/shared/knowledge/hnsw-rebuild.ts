import type pg from 'pg';
import type { KnowledgeTable } from './knowledge-schemas.js';

export type IndexPhase =
  | { phase: 'drop'; index: string }
  | { phase: 'build'; index: string; memory: string }
  | { phase: 'built'; index: string; ms: number };

/**
 * Bulk load with the table's HNSW index out of the way: inserting into a live HNSW graph costs a graph
 * search per row, while one build at the end (with enough maintenance_work_mem that the graph does not
 * spill) is several times cheaper. The index is recreated from its own catalogued definition, so this
 * never drifts from the migrations, and it is recreated even if `load` throws.
 * Lookups during the load fall back to exact scans: a maintenance-window operation.
 */
export async function withHnswRebuild<T>(
  pool: pg.Pool,
  table: KnowledgeTable | 'semantic_cache',
  opts: { memory: string; onPhase?: (p: IndexPhase) => void },
  load: () => Promise<T>,
): Promise<T> {
  const index = `${table}_embedding_idx`;
  const { rows } = await pool.query<{ indexdef: string }>('SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = $1 AND indexname = $2', [table, index]);
  const def = rows[0]?.indexdef;
  if (def) {
    opts.onPhase?.({ phase: 'drop', index });
    await pool.query(`DROP INDEX IF EXISTS ${index}`);
  }
  try {
    return await load();
  } finally {
    if (def) await buildIndex(pool, def, index, opts);
  }
}

async function buildIndex(pool: pg.Pool, def: string, index: string, opts: { memory: string; onPhase?: (p: IndexPhase) => void }) {
  const client = await pool.connect();
  try {
    opts.onPhase?.({ phase: 'build', index, memory: opts.memory });
    const t = performance.now();
    // SET LOCAL: the memory setting ends with the build's transaction and never leaks into pooled sessions.
    await client.query('BEGIN');
    await client.query("SELECT set_config('maintenance_work_mem', $1, true)", [opts.memory]);
    await client.query(def);
    await client.query('COMMIT');
    opts.onPhase?.({ phase: 'built', index, ms: Math.round(performance.now() - t) });
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    client.release();
  }
}
