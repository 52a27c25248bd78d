import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import type { Logger } from '../../core/logger.js';
import { tryLock, type OwnerLock } from './owner-lock.js';
import { openDatabase, type Database } from './pool.js';

interface EmbeddedOptions {
  dataDir: string;
  pglitePort?: number;
  pgliteSharedBuffers?: string;
  pglitePrewarm?: boolean;
  logger: Logger;
}

interface Owner {
  pid: number;
  url: string;
}

/**
 * How long a process waits for the owner it found (alive, holding the lock) to publish its socket: a first
 * start creates the data dir (initdb in WASM), which a busy small machine stretches to a minute or more.
 */
const OWNER_WAIT_MS = 300_000;
const POLL_MS = 100;
/** After this long waiting, say so once (the process is not hung, it waits for the owner). */
const SAY_WAITING_MS = 5_000;

function readOwner(file: string): Owner | undefined {
  try {
    return JSON.parse(readFileSync(file, 'utf8')) as Owner;
  } catch {
    return undefined;
  }
}

async function answers(url: string): Promise<boolean> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 1000 });
  try {
    await client.connect();
    await client.query('SELECT 1');
    return true;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => {});
  }
}

/**
 * Opens the database. Without DATABASE_URL the embedded PGlite is used, and exactly one process on the
 * machine owns its data dir: the one holding `<dataDir>/pglite.lock` (an exclusive lock file naming its
 * pid, see owner-lock.ts; a dead owner's lock is taken over). The owner publishes its socket URL in
 * `<dataDir>/pglite.json` and is the only process that removes it; every other local process
 * (`npm run worker` beside `npm run api`, the CLIs) waits for that file and connects through the socket,
 * so all of them read and write the same database.
 */
export async function openSharedDatabase(opts: EmbeddedOptions & { databaseUrl?: string }): Promise<Database> {
  if (opts.databaseUrl) return openDatabase(opts);
  mkdirSync(opts.dataDir, { recursive: true });
  const lockFile = join(opts.dataDir, 'pglite.lock');
  const ownerFile = join(opts.dataDir, 'pglite.json');
  const started = Date.now();
  let said = false;
  for (;;) {
    const attempt = tryLock(lockFile);
    if (attempt.owned) return own(opts, attempt.lock, ownerFile);
    if (attempt.holderPid !== undefined) {
      const owner = readOwner(ownerFile);
      // The file must be the live lock holder's: one left by an earlier owner names a dead socket.
      if (owner?.pid === attempt.holderPid && (await answers(owner.url))) {
        opts.logger.info({ ownerPid: owner.pid }, 'using the embedded PGlite owned by another local agentq process');
        return openDatabase({ ...opts, databaseUrl: owner.url });
      }
    }
    if (!said && Date.now() - started > SAY_WAITING_MS) {
      said = true;
      opts.logger.info({ ownerPid: attempt.holderPid }, 'waiting for the local process that owns the embedded PGlite to start it');
    }
    if (Date.now() - started > OWNER_WAIT_MS) {
      throw new Error(
        `the embedded PGlite in ${opts.dataDir} is locked by process ${attempt.holderPid ?? '(unknown)'}, which did not publish a working socket in ${ownerFile} within ${OWNER_WAIT_MS / 1000} s`,
      );
    }
    await sleep(POLL_MS);
  }
}

async function own(opts: EmbeddedOptions, lock: OwnerLock, ownerFile: string): Promise<Database> {
  if (lock.tookOverFrom !== undefined) opts.logger.warn({ deadOwnerPid: lock.tookOverFrom }, 'took over the embedded PGlite lock of a process that is gone');
  // A crash that skips close() still frees the lock for the next process at once (a SIGKILL leaves it
  // behind, and the next process takes it over).
  const onExit = () => lock.release();
  process.once('exit', onExit);
  let db: Database;
  try {
    db = await openDatabase(opts);
    // Written whole, then renamed: a reader never sees half a file.
    const temp = `${ownerFile}.${process.pid}`;
    writeFileSync(temp, JSON.stringify({ pid: process.pid, url: db.url } satisfies Owner));
    renameSync(temp, ownerFile);
  } catch (err) {
    process.off('exit', onExit);
    lock.release();
    throw err;
  }
  return {
    ...db,
    async close() {
      // Unpublished first, so no newcomer connects to a socket about to close; the lock goes last, once
      // the data dir is no longer written.
      if (readOwner(ownerFile)?.pid === process.pid) rmSync(ownerFile, { force: true });
      try {
        await db.close();
      } finally {
        process.off('exit', onExit);
        lock.release();
      }
    },
  };
}
