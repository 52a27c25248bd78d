import type pg from 'pg';

/** The `SET` clauses a SQL function runs with (pg_proc.proconfig), e.g. hnsw.ef_search and hnsw.iterative_scan. */
export async function functionSettings(pool: pg.Pool, fn: string): Promise<Record<string, string>> {
  const { rows } = await pool.query<{ proconfig: string[] | null }>('SELECT proconfig FROM pg_proc WHERE proname = $1', [fn]);
  return Object.fromEntries((rows[0]?.proconfig ?? []).map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
}

/**
 * The hnsw.ef_search a similarity function's large-scope branch runs with: sized by the index it walks
 * (migration 014's vector_ef_search_for), or undefined before that migration (the SET clause's value holds).
 */
export async function sizedEfSearch(pool: pg.Pool, index: string): Promise<number | undefined> {
  const { rows } = await pool.query<{ ef: number | null }>(
    `SELECT CASE WHEN to_regproc('vector_ef_search_for') IS NULL THEN NULL ELSE vector_ef_search_for(pg_relation_size($1::regclass)) END AS ef`,
    [index],
  );
  return rows[0]?.ef ?? undefined;
}

/**
 * Runs `sql` in a short transaction with `settings` applied by SET LOCAL (as a function's SET clauses are); times the query alone.
 * `hide` drops those indexes inside the transaction, which then rolls back (DDL is transactional: the index is
 * back untouched), so a query can be measured on the plan it had before an index existed.
 */
export async function withSettings<T extends pg.QueryResultRow>(pool: pg.Pool, settings: Record<string, string>, sql: string, params: unknown[], hide: string[] = []) {
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    for (const ix of hide) await client.query(`DROP INDEX IF EXISTS ${client.escapeIdentifier(ix)}`);
    for (const [k, v] of Object.entries(settings)) await client.query('SELECT set_config($1, $2, true)', [k, v]);
    const t = performance.now();
    const res = await client.query<T>(sql, params);
    const ms = performance.now() - t;
    await client.query(hide.length ? 'ROLLBACK' : 'COMMIT');
    return { rows: res.rows, ms };
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    client.release();
  }
}
