import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { isAlive, lockHolder, tryLock, type OwnerLock } from './owner-lock.js';
import { createPool, openDatabase, startEmbedded, type Database, type DbTimeouts, type EmbeddedOptions } from './pool.js';

interface Owner {
  pid: number;
  url: string;
}

/** The owner this process reaches the database through; `own` when that is this process (how it stops serving). */
interface Reach extends Owner {
  own?: { unpublish(): void; stop(): Promise<void> };
}

interface Files {
  lock: string;
  owner: string;
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
 * so all of them read and write the same database. The owner can die (SIGKILL) or close while the others
 * run on: each new connection of their pool first checks that the owner it dials still holds the lock and
 * still publishes that socket, and if not finds the owner again the same way (one that took over, a
 * restarted one, or this process itself when the lock is free or its holder dead).
 */
export async function openSharedDatabase(opts: EmbeddedOptions & { databaseUrl?: string; timeouts?: DbTimeouts }): Promise<Database> {
  if (opts.databaseUrl) return openDatabase({ databaseUrl: opts.databaseUrl, logger: opts.logger, ...(opts.timeouts ? { timeouts: opts.timeouts } : {}) });
  mkdirSync(opts.dataDir, { recursive: true });
  const files: Files = { lock: join(opts.dataDir, 'pglite.lock'), owner: join(opts.dataDir, 'pglite.json') };
  const closing = new AbortController();
  let reach = await findOwner(opts, files, closing.signal);
  let finding: Promise<Reach> | undefined;
  const current = (): Promise<Reach> => {
    // The owner never looks itself up again: its own lock would read as another live holder.
    if (!reach.own && !finding && !stillOwns(files, reach)) {
      opts.logger.warn({ ownerPid: reach.pid }, 'the process that served the embedded PGlite is gone or no longer serves it: finding its owner again');
      finding = findOwner(opts, files, closing.signal)
        .then((found) => (reach = found))
        .finally(() => (finding = undefined));
    }
    return finding ?? Promise.resolve(reach);
  };
  const t = opts.timeouts;
  // No statement_timeout: PGlite ignores it (start parameters are not applied, and a statement runs to its end
  // in WASM); the client's query timeout is the bound. The first start's initdb is over before this pool exists.
  const pool = createPool(reach.url, { logger: opts.logger, Client: clientReaching(current), ...(t ? { timeouts: { connectMs: t.connectMs, queryMs: t.queryMs } } : {}) });
  // PGlite serves one session: a new connection's start waits behind any open transaction, such as another
  // process's migration of a big table at its start, so the long work's connect waits as long as an owner may.
  const longPool = createPool(reach.url, { max: 1, logger: opts.logger, Client: clientReaching(current), ...(t ? { timeouts: { connectMs: Math.max(t.connectMs, OWNER_WAIT_MS) } } : {}) });
  let closed = false;
  return {
    pool,
    longPool,
    get url() {
      return reach.url;
    },
    get embedded() {
      return reach.own !== undefined;
    },
    async close() {
      if (closed) return;
      closed = true;
      // A search for the owner stops waiting; one that made this process the owner has finished, so it is stopped below.
      closing.abort();
      await finding?.catch(() => undefined);
      const own = reach.own;
      // Unpublished first, so no newcomer connects to a socket about to close.
      own?.unpublish();
      try {
        await Promise.all([pool.end(), longPool.end()]);
      } finally {
        await own?.stop();
      }
    },
  };
}

/** True while the process `reach` dials holds the lock, is alive, and publishes that socket still. */
function stillOwns(files: Files, reach: Reach): boolean {
  if (lockHolder(files.lock) !== reach.pid || !isAlive(reach.pid)) return false;
  const published = readOwner(files.owner);
  return published?.pid === reach.pid && published.url === reach.url;
}

/**
 * The owner of the data dir: this process, if it gets the lock (free, or its holder dead), or the live
 * holder once it publishes a socket that answers.
 */
async function findOwner(opts: EmbeddedOptions, files: Files, signal: AbortSignal): Promise<Reach> {
  const started = Date.now();
  let said = false;
  for (;;) {
    signal.throwIfAborted();
    const attempt = tryLock(files.lock);
    if (attempt.owned) return own(opts, attempt.lock, files.owner);
    if (attempt.holderPid !== undefined) {
      const owner = readOwner(files.owner);
      // The file must be the live lock holder's: one left by an earlier owner names a dead socket.
      if (owner?.pid === attempt.holderPid && (await answers(owner.url))) {
        opts.logger.info({ ownerPid: owner.pid }, 'using the embedded PGlite owned by another local agentq process');
        return { pid: owner.pid, url: owner.url };
      }
    }
    if (!said && Date.now() - started > SAY_WAITING_MS) {
      said = true;
      opts.logger.info({ ownerPid: attempt.holderPid }, 'waiting for the local process that owns the embedded PGlite to start it');
    }
    if (Date.now() - started > OWNER_WAIT_MS) {
      throw new Error(
        `the embedded PGlite in ${opts.dataDir} is locked by process ${attempt.holderPid ?? '(unknown)'}, which did not publish a working socket in ${files.owner} within ${OWNER_WAIT_MS / 1000} s`,
      );
    }
    await sleep(POLL_MS, undefined, { signal });
  }
}

async function own(opts: EmbeddedOptions, lock: OwnerLock, ownerFile: string): Promise<Reach> {
  if (lock.tookOverFrom !== undefined) opts.logger.warn({ deadOwnerPid: lock.tookOverFrom }, 'took over the embedded PGlite lock of a process that is gone');
  // A crash that skips close() still frees the lock for the next process at once (a SIGKILL leaves it
  // behind, and the next process takes it over).
  const onExit = () => lock.release();
  process.once('exit', onExit);
  let embedded: Awaited<ReturnType<typeof startEmbedded>>;
  try {
    embedded = await startEmbedded(opts);
    // Written whole, then renamed: a reader never sees half a file.
    const temp = `${ownerFile}.${process.pid}`;
    writeFileSync(temp, JSON.stringify({ pid: process.pid, url: embedded.url } satisfies Owner));
    renameSync(temp, ownerFile);
  } catch (err) {
    process.off('exit', onExit);
    lock.release();
    throw err;
  }
  return {
    pid: process.pid,
    url: embedded.url,
    own: {
      unpublish() {
        if (readOwner(ownerFile)?.pid === process.pid) rmSync(ownerFile, { force: true });
      },
      async stop() {
        // The lock goes last, once the data dir is no longer written.
        try {
          await embedded.stop();
        } finally {
          process.off('exit', onExit);
          lock.release();
        }
      },
    },
  };
}

type Connected = ((err: Error) => void) | ((err: null, c: pg.Client) => void);

/**
 * A pg Client (for the pool, which makes one per connection) that asks `reach` where the embedded database
 * is as it connects, instead of the URL the pool was made with: the owner may have changed since, on
 * another port. Only a connection is aimed anew, never a query: one in flight when the owner died fails to
 * its caller, who alone knows whether running it again is safe. The wait for a new owner (OWNER_WAIT_MS at
 * most) is not cut by the connect timeout: pg-pool's timer only destroys the socket not yet opened, which
 * `super.connect` opens again; the client's own timer bounds the connect itself, from `super.connect` on.
 */
function clientReaching(reach: () => Promise<Owner>): typeof pg.Client {
  return class ReachingClient extends pg.Client {
    override connect(): Promise<pg.Client>;
    override connect(callback: Connected): void;
    override connect(callback?: Connected): Promise<pg.Client> | void {
      const aimed = reach().then(({ url }) => {
        const { hostname, port } = new URL(url);
        this.host = hostname;
        this.port = Number(port);
      });
      if (!callback) return aimed.then(() => super.connect());
      void aimed.then(() => super.connect(callback), callback as (err: Error) => void);
    }
  };
}
