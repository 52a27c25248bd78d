import { join } from 'node:path';
import pg from 'pg';
import type { Config } from '../../core/config.js';
import { DatabaseUnavailableError } from '../../core/errors.js';
import type { Logger } from '../../core/logger.js';
import { startEmbeddedPostgres } from './embedded-postgres.js';

export type Pool = pg.Pool;

/** How long a pool waits on Postgres (all optional: a pool without them waits as long as it takes). */
export interface PoolTimeouts {
  /** A new connection's connect (TCP, startup, authentication), and a wait for a free one while the pool is full. */
  connectMs?: number;
  /** The longest a query waits for its answer: pg then fails it and the pool drops its connection. */
  queryMs?: number;
  /** Sent at connect as the server's statement_timeout (real Postgres only: the embedded PGlite ignores it). */
  statementMs?: number;
}

/** PG_CONNECT_TIMEOUT_MS, PG_QUERY_TIMEOUT_MS and PG_STATEMENT_TIMEOUT, as the database openers take them. */
export interface DbTimeouts {
  connectMs: number;
  queryMs: number;
  /** Whether a real Postgres is also sent `statement_timeout` (see `serverStatementMs`). */
  statementTimeout: boolean;
}

export const dbTimeoutsOf = (cfg: Pick<Config, 'PG_CONNECT_TIMEOUT_MS' | 'PG_QUERY_TIMEOUT_MS' | 'PG_STATEMENT_TIMEOUT'>): DbTimeouts => ({
  connectMs: cfg.PG_CONNECT_TIMEOUT_MS,
  queryMs: cfg.PG_QUERY_TIMEOUT_MS,
  statementTimeout: cfg.PG_STATEMENT_TIMEOUT,
});

/**
 * The server cancels a statement a little before the client would give up on it, so a slow statement stops
 * using the server (and its locks) at once: a client that gives up only drops its connection, and the backend
 * runs on until it next writes to it. The client's bound is the backstop for a server that answers nothing.
 */
export const serverStatementMs = (queryMs: number): number => queryMs - Math.min(1000, Math.floor(queryMs / 10));

/**
 * TCP keepalive on every connection, probing after this long idle: a peer gone without a FIN or RST (a failover,
 * a dropped NAT entry) is found out, also under a long migration that has no query timeout.
 */
const KEEPALIVE_IDLE_MS = 10_000;

/** SQLSTATEs of a server that cannot serve now: query_canceled (statement_timeout), shutting down, starting up, full. */
const UNAVAILABLE_SQLSTATES = new Set(['57014', '57P01', '57P02', '57P03', '53300']);
/** Socket errors of a server out of reach. */
const UNREACHABLE_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EPIPE', 'EAI_AGAIN']);
/**
 * pg's own errors for a timeout or a lost connection carry no code, only these fixed texts (pg 8 client.js:
 * query_timeout, a connection ended; pg-pool 3: connectionTimeoutMillis on a new connection or on a wait for one).
 */
const PG_UNAVAILABLE_TEXTS = new Set([
  'Query read timeout',
  'timeout exceeded when trying to connect',
  'Connection terminated due to connection timeout',
  'Connection terminated unexpectedly',
  'Client has encountered a connection error and is not queryable',
]);

/** `err` as a DatabaseUnavailableError when it says Postgres is slow or out of reach; any other error as it is. */
function asUnavailable(err: unknown): unknown {
  if (!(err instanceof Error) || err instanceof DatabaseUnavailableError) return err;
  const code = (err as { code?: unknown }).code;
  const unavailable =
    PG_UNAVAILABLE_TEXTS.has(err.message) ||
    (typeof code === 'string' && (UNAVAILABLE_SQLSTATES.has(code) || code.startsWith('08') || UNREACHABLE_CODES.has(code)));
  return unavailable ? new DatabaseUnavailableError(err) : err;
}

const rethrowUnavailable = (err: unknown): never => {
  throw asUnavailable(err);
};

/**
 * pg's Pool whose promise-returning `query` and `connect` reject with a DatabaseUnavailableError (code
 * EDBUNAVAILABLE) when Postgres is slow or unreachable, so callers decide by code (API 503, a worker's attempt delayed), never
 * by pg's message text. The callback forms (pg-pool's own `query` acquires through `connect(cb)`) pass through.
 */
class CodedPool extends pg.Pool {
  override query(...args: any[]): any {
    const result: unknown = (super.query as (...a: unknown[]) => unknown).apply(this, args);
    return result instanceof Promise ? result.catch(rethrowUnavailable) : result;
  }

  override connect(...args: any[]): any {
    const result: unknown = (super.connect as (...a: unknown[]) => unknown).apply(this, args);
    return result instanceof Promise ? result.catch(rethrowUnavailable) : result;
  }
}

export function createPool(url: string, opts: { max?: number; logger?: Logger; Client?: typeof pg.Client; timeouts?: PoolTimeouts } = {}): pg.Pool {
  const t = opts.timeouts ?? {};
  const pool = new CodedPool({
    connectionString: url,
    max: opts.max ?? 10,
    idleTimeoutMillis: 30_000,
    keepAlive: true,
    keepAliveInitialDelayMillis: KEEPALIVE_IDLE_MS,
    ...(t.connectMs ? { connectionTimeoutMillis: t.connectMs } : {}),
    ...(t.queryMs ? { query_timeout: t.queryMs } : {}),
    ...(t.statementMs ? { statement_timeout: t.statementMs } : {}),
    ...(opts.Client ? { Client: opts.Client } : {}),
  });
  // An idle client losing its connection emits 'error' on the pool; unhandled, it would crash the process.
  pool.on('error', (err) => opts.logger?.warn({ err: err.message }, 'postgres idle client error'));
  return pool;
}

const probes = new WeakMap<pg.Pool, Promise<unknown>>();

/**
 * `SELECT 1` for a readiness probe: bounded by `timeoutMs` (pg's per-query query_timeout), and one at a time
 * per pool (a probe arriving while one is out shares its answer). A probe left to the pool's own bounds would
 * hold a connection for PG_QUERY_TIMEOUT_MS after /readyz gave up on it, and a connect to a server that never
 * answers for PG_CONNECT_TIMEOUT_MS: probes every second would take every connection of the pool.
 */
export function probeDatabase(pool: pg.Pool, timeoutMs: number): Promise<unknown> {
  let probe = probes.get(pool);
  if (!probe) {
    // query_timeout per query is pg's (client.js reads it from the query's config first); its typings lack it.
    probe = pool.query({ text: 'SELECT 1', query_timeout: timeoutMs } as pg.QueryConfig).finally(() => probes.delete(pool));
    probes.set(pool, probe);
  }
  return probe;
}

export interface Database {
  /** Every request's and job's queries, bounded by PG_CONNECT_TIMEOUT_MS and PG_QUERY_TIMEOUT_MS. */
  pool: pg.Pool;
  /**
   * One connection for work that takes as long as it takes, never cut by the query timeouts: migrations and HNSW
   * index builds (an index over millions of rows builds for an hour). Its connect is still bounded.
   */
  longPool: pg.Pool;
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
export function openDatabase(opts: { databaseUrl: string; max?: number; logger: Logger; timeouts?: DbTimeouts }): Database {
  const t = opts.timeouts;
  const pool = createPool(opts.databaseUrl, {
    max: opts.max,
    logger: opts.logger,
    ...(t ? { timeouts: { connectMs: t.connectMs, queryMs: t.queryMs, ...(t.statementTimeout ? { statementMs: serverStatementMs(t.queryMs) } : {}) } } : {}),
  });
  const longPool = createPool(opts.databaseUrl, { max: 1, logger: opts.logger, ...(t ? { timeouts: { connectMs: t.connectMs } } : {}) });
  return {
    pool,
    longPool,
    url: opts.databaseUrl,
    embedded: false,
    async close() {
      await Promise.all([pool.end(), longPool.end()]);
    },
  };
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
