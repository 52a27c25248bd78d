import type pg from 'pg';

export interface PurgeOptions {
  /** Rows per DELETE statement. */
  batchSize?: number;
  /** Stops after this many batches (the next run continues), so one run has a bounded duration. */
  maxBatches?: number;
}

/**
 * Deletes expired semantic-cache rows; returns how many. Lookups already ignore them, this only reclaims
 * space. Batches of `batchSize`, each its own short statement, so a backlog of 100k expired rows never
 * holds one long lock (on PGlite, where every connection shares one session, it never stalls lookups for
 * long either); rows another transaction holds are skipped and left to the next run.
 */
export async function purgeExpiredSemanticCache(pool: pg.Pool, { batchSize = 1000, maxBatches = Infinity }: PurgeOptions = {}): Promise<{ deleted: number; batches: number }> {
  if (!(Number.isInteger(batchSize) && batchSize > 0)) throw new RangeError('batchSize must be a positive integer');
  let deleted = 0;
  let batches = 0;
  while (batches < maxBatches) {
    const res = await pool.query(
      `DELETE FROM semantic_cache WHERE id IN (
         SELECT id FROM semantic_cache WHERE expires_at <= now() ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)`,
      [batchSize],
    );
    const n = res.rowCount ?? 0;
    batches++;
    deleted += n;
    if (n < batchSize) break;
  }
  return { deleted, batches };
}
