import type pg from 'pg';
import type { KnowledgeTable } from './knowledge-schemas.js';

export type IndexPhase =
  | { phase: 'drop'; index: string }
  | { phase: 'build'; index: string; memory: string }
  | { phase: 'built'; index: string; ms: number };

type VectorTable = KnowledgeTable | 'semantic_cache';

/**
 * Bulk load with the table's HNSW indexes out of the way: inserting into a live HNSW graph costs a graph
 * search per row, while one build at the end (with enough maintenance_work_mem that the graph does not
 * spill) is several times cheaper. With `orgId`, that org's own index (migration 015) goes out of the way
 * too, since the rows being loaded are exactly the ones it holds. Each index is recreated from its own
 * catalogued definition, so this never drifts from the migrations, and it is recreated even if `load`
 * throws. Lookups during the load fall back to exact scans: a maintenance-window operation.
 */
export async function withHnswRebuild<T>(
  pool: pg.Pool,
  table: VectorTable,
  opts: { memory: string; orgId?: string; onPhase?: (p: IndexPhase) => void },
  load: () => Promise<T>,
): Promise<T> {
  const names = [`${table}_embedding_idx`];
  if (opts.orgId) names.push(await tenantIndexName(pool, table, opts.orgId));
  const { rows } = await pool.query<{ indexname: string; indexdef: string }>(
    'SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = $1 AND indexname = ANY($2::text[])',
    [table, names],
  );
  const defs = names.flatMap((n) => rows.filter((r) => r.indexname === n));
  for (const { indexname } of defs) {
    opts.onPhase?.({ phase: 'drop', index: indexname });
    await pool.query(`DROP INDEX IF EXISTS ${indexname}`);
  }
  try {
    return await load();
  } finally {
    for (const { indexname, indexdef } of defs) await buildIndex(pool, indexdef, indexname, opts);
  }
}

/** The name migration 015 gives `orgId`'s own HNSW index on `table` (whether or not it exists). */
export async function tenantIndexName(pool: pg.Pool, table: VectorTable, orgId: string): Promise<string> {
  const { rows } = await pool.query<{ name: string }>('SELECT vector_tenant_index_name($1, $2) AS name', [table, orgId]);
  return rows[0].name;
}

/**
 * Builds `orgId`'s own HNSW index on `table` (migration 015's vector_tenant_index_create: a partial index the
 * similarity functions walk for that org instead of the shared one), reporting the phases. A no-op build
 * when it exists.
 */
export async function createTenantIndex(
  pool: pg.Pool,
  table: VectorTable,
  orgId: string,
  opts: { memory: string; onPhase?: (p: IndexPhase) => void },
): Promise<string> {
  const index = await tenantIndexName(pool, table, orgId);
  opts.onPhase?.({ phase: 'build', index, memory: opts.memory });
  const t = performance.now();
  await pool.query('SELECT vector_tenant_index_create($1, $2, $3)', [table, orgId, opts.memory]);
  opts.onPhase?.({ phase: 'built', index, ms: Math.round(performance.now() - t) });
  return index;
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
