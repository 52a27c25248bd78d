import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { inject } from 'vitest';
import { startEmbeddedPostgres, type EmbeddedPostgres } from '../../src/shared/infra/db/embedded-postgres.js';

type Options = Omit<NonNullable<Parameters<typeof startEmbeddedPostgres>[0]>, 'loadDataDir'>;

/**
 * An embedded Postgres of the file's own (in memory, or a new `dataDir`), started from the global setup's dump
 * of a fresh data dir when there is one: the cluster initdb makes, without initdb's ~5 s of CPU (PGlite in WASM)
 * in each file that needs a private database. A `dataDir` that holds a database already is opened as it is.
 */
export function freshEmbeddedPostgres(opts: Options = {}): Promise<EmbeddedPostgres> {
  const dump = inject('pgDump');
  const initialised = opts.dataDir !== undefined && existsSync(join(opts.dataDir, 'PG_VERSION'));
  return startEmbeddedPostgres(dump && !initialised ? { ...opts, loadDataDir: new Blob([readFileSync(dump)]) } : opts);
}
