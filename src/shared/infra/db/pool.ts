import { join } from 'node:path';
import pg from 'pg';
import type { Logger } from '../../core/logger.js';
import { startEmbeddedPostgres } from './embedded-postgres.js';

export type Pool = pg.Pool;

export function createPool(url: string, opts: { max?: number; logger?: Logger } = {}): pg.Pool {
  const pool = new pg.Pool({ connectionString: url, max: opts.max ?? 10, idleTimeoutMillis: 30_000 });
  // An idle client losing its connection emits 'error' on the pool; unhandled, it would crash the process.
  pool.on('error', (err) => opts.logger?.warn({ err: err.message }, 'postgres idle client error'));
  return pool;
}

export interface Database {
  pool: pg.Pool;
  /** The URL other processes can use to reach the same database (the PGlite socket when embedded). */
  url: string;
  embedded: boolean;
  close(): Promise<void>;
}

/** DATABASE_URL when given; otherwise an embedded PGlite whose data lives under `${dataDir}/pg`. */
export async function openDatabase(opts: {
  databaseUrl?: string;
  dataDir: string;
  pglitePort?: number;
  pgliteSharedBuffers?: string;
  pglitePrewarm?: boolean;
  logger: Logger;
  max?: number;
}): Promise<Database> {
  if (opts.databaseUrl) {
    const pool = createPool(opts.databaseUrl, { max: opts.max, logger: opts.logger });
    return { pool, url: opts.databaseUrl, embedded: false, close: () => pool.end() };
  }
  const dataDir = join(opts.dataDir, 'pg');
  const embedded = await startEmbeddedPostgres({ dataDir, port: opts.pglitePort || 0, sharedBuffers: opts.pgliteSharedBuffers, prewarm: opts.pglitePrewarm });
  opts.logger.info({ dataDir, port: new URL(embedded.url).port, ...(opts.pgliteSharedBuffers ? { sharedBuffers: opts.pgliteSharedBuffers } : {}) }, 'embedded PGlite started');
  embedded.prewarmed?.then(
    (r) => {
      const pages = r.read.reduce((n, i) => n + i.pages, 0);
      if (r.read.length) opts.logger.info({ indexes: r.read.map((i) => i.index), mb: Math.round((pages * 8) / 1024), ms: r.ms }, 'vector indexes read into shared_buffers');
      if (r.skipped.length) {
        opts.logger.warn(
          { skipped: r.skipped.map((i) => ({ index: i.index, mb: Math.round((i.pages * 8) / 1024) })), budgetMb: Math.round((r.budgetPages * 8) / 1024) },
          'vector indexes left out of the prewarm: they do not fit 3/4 of shared_buffers, so their first queries after a start read from disk; raise PGLITE_SHARED_BUFFERS',
        );
      }
    },
    (err: unknown) => opts.logger.warn({ err: err instanceof Error ? err.message : String(err) }, 'prewarm of the vector indexes failed (queries are served, colder)'),
  );
  const pool = createPool(embedded.url, { max: opts.max, logger: opts.logger });
  let closed = false;
  return {
    pool,
    url: embedded.url,
    embedded: true,
    async close() {
      if (closed) return;
      closed = true;
      await pool.end();
      await embedded.stop();
    },
  };
}
