import { createServer, type AddressInfo } from 'node:net';
import type pg from 'pg';
import { createPool } from '../../src/shared/infra/db/pool.js';

interface Down {
  pool: pg.Pool;
  /** Knowledge searches (match_documents queries) still answered by the real database before the outage starts. */
  passSearches: number;
  /** Knowledge searches sent to the outage. */
  failedSearches: number;
}

/**
 * Postgres down for some orgs only: once an org is `down`, every query naming it among its parameters (its
 * knowledge search, quota read, semantic cache lookup and store, usage rows) goes to `pool`, a real pool (pool.ts,
 * the worker's own error mapping) aimed at a server that is down or hung; every other query reaches the real
 * database. The API's key checks and the other orgs go on, as the suite needs them to.
 */
export function orgOutage() {
  const down = new Map<string, Down>();
  const routeOf = (args: unknown[]) => {
    const [first, second] = args;
    const text = typeof first === 'string' ? first : (first as { text?: string } | undefined)?.text ?? '';
    const values = Array.isArray(second) ? second : ((first as { values?: unknown[] } | undefined)?.values ?? []);
    for (const [org, d] of down) {
      if (!values.includes(org)) continue;
      const search = text.includes('match_documents');
      if (d.passSearches > 0) {
        if (search) d.passSearches--;
        return undefined;
      }
      if (search) d.failedSearches++;
      return d.pool;
    }
    return undefined;
  };
  return {
    wrap(real: pg.Pool): pg.Pool {
      return new Proxy(real, {
        get(target, key) {
          if (key === 'query') return (...args: unknown[]) => ((routeOf(args) ?? target).query as (...a: unknown[]) => unknown)(...args);
          const value: unknown = Reflect.get(target, key, target);
          return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
        },
      });
    },
    /** The org's queries go to `pool` from now on, or once `passSearches` of its knowledge searches went through. */
    down(org: string, pool: pg.Pool, opts: { passSearches?: number } = {}) {
      down.set(org, { pool, passSearches: opts.passSearches ?? 0, failedSearches: 0 });
    },
    /** The database is back for the org. */
    up(org: string) {
      down.delete(org);
    },
    failedSearches: (org: string) => down.get(org)?.failedSearches ?? 0,
  };
}

/** A pool (pool.ts, short bounds) aimed at a port nothing listens on: Postgres down, every query refused at once. */
export async function refusedPool(): Promise<pg.Pool> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return createPool(`postgres://agentq:agentq@127.0.0.1:${port}/agentq`, { max: 2, timeouts: { connectMs: 300, queryMs: 300 } });
}
