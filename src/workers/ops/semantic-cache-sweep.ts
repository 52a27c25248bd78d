import type pg from 'pg';
import { purgeExpiredSemanticCache } from '../../shared/cache/semantic-cache-purge.js';
import type { Logger } from '../../shared/core/logger.js';

/**
 * Maintenance task: removes expired semantic-cache rows in short batches (each its own DELETE, so no
 * long lock), at most `maxBatches` per run; a bigger backlog is finished by the next runs.
 */
export function createSemanticCacheSweep(deps: { pool: pg.Pool; batchSize: number; maxBatches: number; logger: Logger }) {
  return async function sweep(): Promise<{ deleted: number; batches: number }> {
    const r = await purgeExpiredSemanticCache(deps.pool, { batchSize: deps.batchSize, maxBatches: deps.maxBatches });
    if (r.deleted) deps.logger.info(r, 'expired semantic-cache entries removed');
    return r;
  };
}
