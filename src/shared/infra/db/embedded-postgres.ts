import { mkdirSync } from 'node:fs';
import { PGlite } from '@electric-sql/pglite';
import { pageinspect } from '@electric-sql/pglite/contrib/pageinspect';
import { vector } from '@electric-sql/pglite-pgvector';
import { PGLiteSocketServer } from '@electric-sql/pglite-socket';
import { prewarmVectorIndexesAt, type PrewarmReport } from './embedded-prewarm.js';
import { serialiseExtendedQueries } from './pglite-wire-queue.js';

export interface EmbeddedPostgres {
  /** A `postgres://` URL that `pg` (in this or any other process on the machine) connects to. */
  url: string;
  db: PGlite;
  /** With `prewarm`: settles when the vector indexes that fit are in shared_buffers (queries are served meanwhile). */
  prewarmed?: Promise<PrewarmReport>;
  stop(): Promise<void>;
}

/**
 * Real Postgres (compiled to WASM) with the real pgvector, served over the Postgres wire protocol so the
 * one `pg`-based data layer serves both this and a real DATABASE_URL. This process owns the data dir;
 * others reach it through the socket. Connections are multiplexed over one session, so a transaction
 * held open on one connection blocks the rest: keep transactions short and never await other queries
 * inside one.
 */
export async function startEmbeddedPostgres(
  opts: {
    dataDir?: string;
    port?: number;
    maxConnections?: number;
    sharedBuffers?: string;
    prewarm?: boolean;
    /** A dump of a data dir (PGlite's `dumpDataDir`) to start from instead of an empty one (initdb, seconds of CPU). */
    loadDataDir?: Blob;
  } = {},
): Promise<EmbeddedPostgres> {
  if (opts.dataDir) mkdirSync(opts.dataDir, { recursive: true });
  // shared_buffers is a startup setting: PGlite takes it among its backend's start parameters (the defaults kept).
  const startParams = opts.sharedBuffers ? { startParams: [...PGlite.defaultStartParams, '-c', `shared_buffers=${opts.sharedBuffers}`] } : {};
  const db = await PGlite.create(opts.dataDir ? `file://${opts.dataDir}` : undefined, {
    extensions: { vector, pageinspect },
    ...startParams,
    ...(opts.loadDataDir ? { loadDataDir: opts.loadDataDir } : {}),
  });
  await db.exec('CREATE EXTENSION IF NOT EXISTS vector');
  const server = new PGLiteSocketServer({ db, port: opts.port ?? 0, host: '127.0.0.1', maxConnections: opts.maxConnections ?? 64 });
  serialiseExtendedQueries(server);
  await server.start();
  const conn = server.getServerConn();
  const port = Number(conn.split(':').pop());
  const url = `postgres://postgres:postgres@127.0.0.1:${port}/postgres?sslmode=disable`;
  const stopping = new AbortController();
  const prewarmed = opts.prewarm ? prewarmVectorIndexesAt(url, { signal: stopping.signal }) : undefined;
  return {
    url,
    db,
    prewarmed,
    async stop() {
      // A prewarm still reading stops at its next chunk; closing under it would fail its query.
      stopping.abort();
      await prewarmed?.catch(() => undefined);
      await server.stop();
      await db.close();
    },
  };
}
