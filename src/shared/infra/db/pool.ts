import { join } from 'node:path';
import pg from 'pg';
import type { Logger } from '../../core/logger.js';
import { startEmbeddedPostgres } from './embedded-postgres.js';

export type Pool = pg.Pool;

export function createPool(url: string, opts: { max?: number; logger?: Logger; Client?: typeof pg.Client } = {}): pg.Pool {
  const pool = new pg.Pool({ connectionString: url, max: opts.max ?? 10, idleTimeoutMillis: 30_000, ...(opts.Client ? { Client: opts.Client } : {}) });
  // An idle client losing its connection emits 'error' on the pool; unhandled, it would crash the process.
  pool.on('error', (err) => opts.logger?.warn({ err: err.message }, 'postgres idle client error'));
  return pool;
}

export interface Database {
  pool: pg.Pool;
  /** The URL other processes can use to reach the same database (when embedded: the current owner's PGlite socket). */
  readonly url: string;
  /** This process runs the embedded PGlite (from the start, or since it took over from an owner that died). */
  readonly embedded: boolean;
  close(): Promise<void>;
}

export interface EmbeddedOptions {
  dataDir: string;
  pglitePort?: number;
  pgliteSharedBuffers?: string;
  pglitePrewarm?: boolean;
  logger: Logger;
}

/** The Postgres at DATABASE_URL (the embedded PGlite is opened by `openSharedDatabase`, shared-embedded.ts). */
export function openDatabase(opts: { databaseUrl: string; max?: number; logger: Logger }): Database {
  const pool = createPool(opts.databaseUrl, { max: opts.max, logger: opts.logger });
  return { pool, url: opts.databaseUrl, embedded: false, close: () => pool.end() };
}

/** Starts the embedded PGlite of `${dataDir}/pg` and its socket, and logs what its prewarm read. */
export async function startEmbedded(opts: EmbeddedOptions): Promise<{ url: string; stop(): Promise<void> }> {
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
  return { url: embedded.url, stop: () => embedded.stop() };
}
