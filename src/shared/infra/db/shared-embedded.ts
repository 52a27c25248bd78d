import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import type { Logger } from '../../core/logger.js';
import { openDatabase, type Database } from './pool.js';

interface Owner {
  pid: number;
  url: string;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
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
 * Opens the database. Without DATABASE_URL the embedded PGlite is used; only one process may own its data
 * dir, so the owner publishes its socket URL in `<dataDir>/pglite.json` and a second local process
 * (`npm run worker` beside `npm run api`) connects through that socket instead of opening the files.
 */
export async function openSharedDatabase(opts: { databaseUrl?: string; dataDir: string; pglitePort?: number; logger: Logger }): Promise<Database> {
  if (opts.databaseUrl) return openDatabase(opts);
  const ownerFile = join(opts.dataDir, 'pglite.json');
  try {
    const owner = JSON.parse(readFileSync(ownerFile, 'utf8')) as Owner;
    if (owner.pid !== process.pid && alive(owner.pid) && (await answers(owner.url))) {
      opts.logger.info({ ownerPid: owner.pid }, 'using the embedded PGlite owned by another local agentq process');
      return openDatabase({ ...opts, databaseUrl: owner.url });
    }
  } catch {
    // No owner file (or a stale one): this process becomes the owner.
  }
  const db = await openDatabase(opts);
  mkdirSync(opts.dataDir, { recursive: true });
  writeFileSync(ownerFile, JSON.stringify({ pid: process.pid, url: db.url } satisfies Owner));
  return {
    ...db,
    async close() {
      rmSync(ownerFile, { force: true });
      await db.close();
    },
  };
}
