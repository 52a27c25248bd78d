import pg from 'pg';

export interface PrewarmedIndex {
  index: string;
  pages: number;
  ms: number;
}

export interface PrewarmReport {
  /** Indexes read whole into shared_buffers, in the order read. */
  read: PrewarmedIndex[];
  /** Indexes left out: reading them would pass the budget. */
  skipped: { index: string; pages: number }[];
  budgetPages: number;
  ms: number;
}

/** Blocks read per statement: PGlite serves one statement at a time, so others wait at most one chunk. */
const CHUNK = 2048;

/**
 * Reads the HNSW indexes into PGlite's shared_buffers, an org's own index (migration 015) before the shared
 * ones, while they fit in `budget` (a share of shared_buffers, so heap pages keep room). A graph walk touches
 * pages all over its index (4,147 buffer reads for one query on an org's 100k-row index, EXPLAIN BUFFERS), and
 * after a start each missing page comes through the WASM file layer (bench vectors-large at 1 GB of buffers:
 * first call p95 121.5 ms without this, 22.9 ms with it, 22.0 ms repeated). Real
 * Postgres does this with pg_prewarm (and its autoprewarm worker across restarts), which PGlite lacks; its
 * pageinspect's get_raw_page reads a block through the buffer manager with the default strategy, so the
 * block stays cached like any other read. It goes through the socket like any client (`db`, a connection of
 * its own): a statement run on the PGlite instance directly could land inside another client's
 * extended-query sequence or transaction (pglite-wire-queue.ts).
 */
export async function prewarmVectorIndexes(db: pg.ClientBase, opts: { budgetShare?: number; signal?: AbortSignal } = {}): Promise<PrewarmReport> {
  const started = performance.now();
  await db.query('CREATE EXTENSION IF NOT EXISTS pageinspect');
  const setting = await db.query<{ pages: number }>("SELECT setting::int AS pages FROM pg_settings WHERE name = 'shared_buffers'");
  const budgetPages = Math.floor(setting.rows[0].pages * (opts.budgetShare ?? 0.75));
  const { rows } = await db.query<{ index: string; pages: number; own: boolean }>(
    `SELECT c.oid::regclass::text AS index, (pg_relation_size(c.oid) / current_setting('block_size')::int)::int AS pages,
            c.relname ~ '_org_[0-9a-f]{16}_hnsw$' AS own
     FROM pg_class c JOIN pg_am am ON am.oid = c.relam
     WHERE c.relkind = 'i' AND am.amname = 'hnsw'
     ORDER BY own DESC, pages`,
  );
  const report: PrewarmReport = { read: [], skipped: [], budgetPages, ms: 0 };
  let used = 0;
  for (const r of rows) {
    if (opts.signal?.aborted) break;
    if (used + r.pages > budgetPages) {
      report.skipped.push({ index: r.index, pages: r.pages });
      continue;
    }
    const t = performance.now();
    for (let from = 0; from < r.pages && !opts.signal?.aborted; from += CHUNK) {
      await db.query('SELECT count(get_raw_page($1, g)) FROM generate_series($2::int, $3::int) g', [r.index, from, Math.min(r.pages, from + CHUNK) - 1]);
    }
    used += r.pages;
    report.read.push({ index: r.index, pages: r.pages, ms: Math.round(performance.now() - t) });
  }
  report.ms = Math.round(performance.now() - started);
  return report;
}

/** prewarmVectorIndexes on a connection of its own to the database at `url`, closed after. */
export async function prewarmVectorIndexesAt(url: string, opts: { budgetShare?: number; signal?: AbortSignal } = {}): Promise<PrewarmReport> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await prewarmVectorIndexes(client, opts);
  } finally {
    await client.end();
  }
}
