import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type pg from 'pg';
import { AgentqError } from '../../core/errors.js';
import type { Logger } from '../../core/logger.js';

export const MIGRATIONS_DIR = resolve(fileURLToPath(new URL('../../../../migrations', import.meta.url)));

export class MigrationError extends AgentqError {
  constructor(
    readonly file: string,
    message: string,
  ) {
    super(`migration ${file} failed: ${message}`, 'EMIGRATION');
  }
}

const CREATE_TABLE = `CREATE TABLE IF NOT EXISTS schema_migrations (
  name text PRIMARY KEY,
  checksum text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now()
)`;

const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

/** Current definitions (SQL functions) live here, one file each, applied again when their revision rises. */
export const REPEATABLE_SUBDIR = 'repeatable';

/**
 * Applies `dir/*.sql` in name order, each file in its own transaction, once; then each `dir/repeatable/*.sql`
 * whose `-- revision: N` is above the one last applied. Versioned files hold schema history; a function that
 * several migrations change would otherwise be restated whole each time (CREATE OR REPLACE takes the whole
 * body), so its one current definition is a repeatable file. The revision, not the text, decides, so an older
 * process starting during a rolling deploy never puts back the definition a newer one applied.
 * Returns the names applied (`repeatable/<file>` for those).
 *
 * Concurrency without advisory locks (PGlite multiplexes every connection into one session, where
 * session locks are re-entrant and exclude nothing): each transaction first claims its file with
 * `INSERT ... ON CONFLICT DO NOTHING`. On Postgres a second claimer blocks on the uncommitted key and
 * then sees the conflict; on PGlite an open transaction already serialises the others. Either way the
 * loser rolls back and skips, and a failed file releases its claim with the rollback.
 */
export async function migrate(pool: pg.Pool, opts: { dir?: string; logger?: Logger } = {}): Promise<string[]> {
  const dir = opts.dir ?? MIGRATIONS_DIR;
  const files = (await readdir(dir)).filter((f) => f.endsWith('.sql')).sort();
  const client = await pool.connect();
  const applied: string[] = [];
  try {
    await ensureTable(client);
    const { rows } = await client.query<{ name: string; checksum: string }>('SELECT name, checksum FROM schema_migrations');
    const known = new Map(rows.map((r) => [r.name, r.checksum]));
    for (const file of files) {
      const sql = await readFile(join(dir, file), 'utf8');
      const checksum = sha256(sql);
      const prior = known.get(file);
      if (prior !== undefined) {
        if (prior !== checksum) throw new MigrationError(file, 'checksum mismatch: the file changed after it was applied');
        continue;
      }
      if (await applyOne(client, file, sql, checksum)) {
        applied.push(file);
        opts.logger?.info({ migration: file }, 'migration applied');
      }
    }
    for (const file of await repeatableFiles(dir)) {
      const sql = await readFile(join(dir, file), 'utf8');
      const mine = repeatableStamp(file, sql);
      const prior = known.get(file);
      if (prior !== undefined && !isNewer(file, mine, prior)) continue;
      if (await applyRepeatable(client, file, sql, mine)) {
        applied.push(file);
        opts.logger?.info({ migration: file, revision: mine.revision }, 'repeatable migration applied');
      }
    }
  } catch (err) {
    // Discard the connection rather than pool it: destroying it also ends any transaction it still holds.
    client.release(true);
    throw err;
  }
  client.release();
  return applied;
}

async function repeatableFiles(dir: string): Promise<string[]> {
  const names = await readdir(join(dir, REPEATABLE_SUBDIR)).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return [] as string[];
    throw err;
  });
  return names.filter((f) => f.endsWith('.sql')).sort().map((f) => `${REPEATABLE_SUBDIR}/${f}`);
}

async function ensureTable(client: pg.PoolClient) {
  try {
    await client.query(CREATE_TABLE);
  } catch (err) {
    // Two Postgres sessions racing on CREATE TABLE IF NOT EXISTS: the loser hits the catalog's unique index.
    if ((err as { code?: string }).code !== '23505') throw err;
    await client.query(CREATE_TABLE);
  }
}

/**
 * Loads the library behind the `vector` type into the session, when the type exists, before a migration runs.
 * pgvector defines its parameters (`hnsw.ef_search`, `hnsw.iterative_scan`...) when its library loads; until
 * then they are placeholders, which Postgres lets only a superuser (or a role granted SET on them) write into a
 * function's SET clause: on a managed Postgres, whose owner role is no superuser, `ALTER FUNCTION ... SET
 * hnsw.ef_search` (008, 012-015, 017, the repeatables) failed with "permission denied to set parameter" in any
 * session that had not used a vector yet. Casting NULL to the type looks up its input function, which loads the
 * library (LOAD itself is refused to non-superusers). Run inside each migration's transaction, so a pooler that
 * hands each transaction another session still gets it. Best effort: a load that fails leaves the migration to
 * run as it would have; on a new database the type does not exist yet and 001's CREATE EXTENSION loads it.
 */
const LOAD_VECTOR_LIBRARY = `DO $$
BEGIN
  IF to_regtype('vector') IS NOT NULL THEN
    PERFORM NULL::vector;
  END IF;
EXCEPTION WHEN OTHERS THEN
  NULL;
END $$`;

const CLAIM_ONCE = 'INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING RETURNING name';
/** A repeatable file's claim updates the row only to a higher revision. */
const CLAIM_REVISION = `INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)
  ON CONFLICT (name) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = now()
  WHERE split_part(schema_migrations.checksum, ':', 1)::int < $3 RETURNING name`;

function applyOne(client: pg.PoolClient, file: string, sql: string, checksum: string): Promise<boolean> {
  return applyClaimed(client, file, sql, [CLAIM_ONCE, [file, checksum]], (current) => {
    if (current !== checksum) throw new MigrationError(file, 'checksum mismatch: applied concurrently with different content');
  });
}

function applyRepeatable(client: pg.PoolClient, file: string, sql: string, mine: Stamp): Promise<boolean> {
  return applyClaimed(client, file, sql, [CLAIM_REVISION, [file, mine.value, mine.revision]], (current) => void isNewer(file, mine, current));
}

/**
 * Claims `file`'s row and runs `sql` in one transaction. A claim that takes no row (another process got there:
 * on Postgres it blocked on the row until that one committed; on PGlite the open transaction serialised them)
 * rolls back, hands the recorded checksum to `taken` (which throws if that is a conflict) and skips.
 */
async function applyClaimed(client: pg.PoolClient, file: string, sql: string, [claimSql, claimValues]: [string, unknown[]], taken: (current: string) => void): Promise<boolean> {
  await client.query('BEGIN');
  let current: string | undefined;
  try {
    const claim = await client.query(claimSql, claimValues);
    if (claim.rowCount === 0) {
      current = (await client.query<{ checksum: string }>('SELECT checksum FROM schema_migrations WHERE name = $1', [file])).rows[0]?.checksum ?? '';
    } else {
      await client.query(LOAD_VECTOR_LIBRARY);
      await client.query(sql);
    }
  } catch (err) {
    await rollback(client);
    throw new MigrationError(file, (err as Error).message);
  }
  if (current !== undefined) {
    await rollback(client);
    taken(current);
    return false;
  }
  try {
    await client.query('COMMIT');
  } catch (err) {
    throw new MigrationError(file, (err as Error).message);
  }
  return true;
}

interface Stamp {
  revision: number;
  /** What schema_migrations.checksum holds for a repeatable file: `<revision>:<sha256>`. */
  value: string;
}

function repeatableStamp(file: string, sql: string): Stamp {
  const m = /^-- revision: (\d+)\s*$/m.exec(sql);
  if (!m) throw new MigrationError(file, 'a repeatable migration needs a "-- revision: N" line');
  const revision = Number(m[1]);
  return { revision, value: `${revision}:${sha256(sql)}` };
}

/** Whether `mine` should replace the applied `prior`; the same revision with other text is a mistake, refused. */
function isNewer(file: string, mine: Stamp, prior: string): boolean {
  const priorRevision = Number(prior.slice(0, prior.indexOf(':')));
  if (mine.revision === priorRevision && mine.value !== prior) {
    throw new MigrationError(file, `its text changed without raising its revision (${mine.revision})`);
  }
  return mine.revision > priorRevision;
}

/** Best effort: if ROLLBACK itself fails the caller destroys the connection, which ends the transaction. */
async function rollback(client: pg.PoolClient) {
  await client.query('ROLLBACK').catch(() => undefined);
}
