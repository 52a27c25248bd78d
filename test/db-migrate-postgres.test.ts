import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { migrate } from '../src/shared/infra/db/migrate.js';
import { startMachinePostgres, type MachinePostgres } from './helpers/machine-postgres.js';

/**
 * Migrations as a managed Postgres runs them: the database's owner is no superuser. pgvector is not packaged for
 * this machine's PostgreSQL, so a stand-in plays its part: a `vector` type whose input function lives in contrib's
 * pg_trgm library, which, like pgvector's, defines its parameters (pg_trgm.similarity_threshold where pgvector has
 * hnsw.ef_search) when it loads. Until then they are placeholders, and a function's SET clause naming one is
 * refused to a non-superuser.
 */
describe('migrations on a real PostgreSQL as a non-superuser owner', () => {
  let server: MachinePostgres;
  let pool: pg.Pool;
  let dir: string;
  const OWNER = 'agentq_owner';
  const DB = 'agentq_managed';
  /** Each connection the pool opened, once closed. */
  const closed: Array<Promise<unknown>> = [];
  const connect = (user: string, database: string) => new pg.Client({ host: server.host, port: server.port, user, database });

  beforeAll(async () => {
    server = await startMachinePostgres();
    const admin = connect(server.superuser, 'postgres');
    await admin.connect();
    await admin.query(`CREATE ROLE ${OWNER} LOGIN`);
    await admin.query(`CREATE DATABASE ${DB} OWNER ${OWNER}`);
    await admin.end();
    // Made by the provider's admin, as CREATE EXTENSION vector is on a managed service.
    const setup = connect(server.superuser, DB);
    await setup.connect();
    await setup.query(`CREATE TYPE vector;
      CREATE FUNCTION vector_in(cstring) RETURNS vector AS '$libdir/pg_trgm', 'gtrgm_in' LANGUAGE C STRICT IMMUTABLE;
      CREATE FUNCTION vector_out(vector) RETURNS cstring AS '$libdir/pg_trgm', 'gtrgm_out' LANGUAGE C STRICT IMMUTABLE;
      CREATE TYPE vector (INPUT = vector_in, OUTPUT = vector_out, INTERNALLENGTH = VARIABLE);`);
    await setup.end();
    dir = mkdtempSync(join(tmpdir(), 'agentq-migrate-pg-'));
    mkdirSync(join(dir, 'repeatable'));
    // As 008 and 012-015 do to the similarity functions, and a repeatable restating its function whole.
    writeFileSync(join(dir, '001_function.sql'), "CREATE FUNCTION nearest(v vector) RETURNS int LANGUAGE sql AS 'SELECT 1';\n");
    writeFileSync(join(dir, '002_function_setting.sql'), 'ALTER FUNCTION nearest(vector) SET pg_trgm.similarity_threshold = 0.5;\n');
    writeFileSync(
      join(dir, 'repeatable', 'nearest_k.sql'),
      "-- revision: 1\nCREATE OR REPLACE FUNCTION nearest_k(v vector, k int) RETURNS int LANGUAGE sql\nSET pg_trgm.word_similarity_threshold = 0.4\nAS 'SELECT k';\n",
    );
    pool = new pg.Pool({ host: server.host, port: server.port, user: OWNER, database: DB, max: 2 });
    // pool.end() resolves before its connections have closed: the server is stopped only once they have (one
    // still open would hear the shutdown as an error nobody listens to).
    pool.on('connect', (client) => closed.push(new Promise((resolve) => client.once('end', resolve))));
  });
  afterAll(async () => {
    await pool?.end();
    await Promise.all(closed);
    await server?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("sets the extension's parameters on functions: the runner loads the library behind the vector type first", async () => {
    // What the owner meets in a session that has not used a vector yet.
    const fresh = connect(OWNER, DB);
    await fresh.connect();
    await expect(fresh.query('CREATE FUNCTION probe() RETURNS int LANGUAGE sql SET pg_trgm.similarity_threshold = 0.5 AS $$SELECT 1$$')).rejects.toThrow(
      /permission denied to set parameter "pg_trgm.similarity_threshold"/,
    );
    await fresh.end();

    expect(await migrate(pool, { dir })).toEqual(['001_function.sql', '002_function_setting.sql', 'repeatable/nearest_k.sql']);
    const { rows } = await pool.query<{ proname: string; proconfig: string[] }>("SELECT proname, proconfig FROM pg_proc WHERE proname IN ('nearest', 'nearest_k') ORDER BY proname");
    expect(rows).toEqual([
      { proname: 'nearest', proconfig: ['pg_trgm.similarity_threshold=0.5'] },
      { proname: 'nearest_k', proconfig: ['pg_trgm.word_similarity_threshold=0.4'] },
    ]);
  });
});
