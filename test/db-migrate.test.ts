import { createHash, randomUUID } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { migrate, MigrationError, MIGRATIONS_DIR, REPEATABLE_SUBDIR } from '../src/shared/infra/db/migrate.js';
import { createPool } from '../src/shared/infra/db/pool.js';
import { databaseUrl } from './helpers/env.js';

// The test database is shared by every test file, so these tests use temp migration dirs whose file and
// table names are unique to this run.
describe('migrate', () => {
  let pool: pg.Pool;
  const dirs: string[] = [];
  const tag = `m${randomUUID().slice(0, 8)}`;

  const tempDir = (files: Record<string, string>) => {
    const dir = mkdtempSync(join(tmpdir(), 'agentq-mig-'));
    dirs.push(dir);
    mkdirSync(join(dir, REPEATABLE_SUBDIR));
    for (const [name, sql] of Object.entries(files)) writeFileSync(join(dir, name), sql);
    return dir;
  };
  const tableExists = async (name: string) => (await pool.query('SELECT to_regclass($1) AS t', [name])).rows[0].t !== null;

  beforeAll(() => {
    pool = createPool(databaseUrl(), { max: 4 });
  });
  afterAll(async () => {
    await pool.end();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('applies the project migrations once, records checksums, and re-running applies nothing', async () => {
    await migrate(pool);
    expect(await migrate(pool)).toEqual([]);
    const files = readdirSync(MIGRATIONS_DIR).filter((f) => f.endsWith('.sql'));
    expect(files.length).toBeGreaterThanOrEqual(6);
    const { rows } = await pool.query('SELECT name, checksum FROM schema_migrations WHERE name = ANY($1)', [files]);
    expect(rows).toHaveLength(files.length);
    for (const r of rows) {
      const sum = createHash('sha256').update(readFileSync(join(MIGRATIONS_DIR, r.name), 'utf8')).digest('hex');
      expect(r.checksum).toBe(sum);
    }
    for (const t of ['orgs', 'api_keys', 'industry_packs', 'playbooks', 'chat_facts', 'semantic_cache', 'agent_runs']) {
      expect(await tableExists(t)).toBe(true);
    }
    const idx = await pool.query("SELECT count(*)::int AS n FROM pg_indexes WHERE indexdef ILIKE '%USING hnsw (embedding vector_cosine_ops)%'");
    expect(idx.rows[0].n).toBeGreaterThanOrEqual(4);
    // The repeatable definitions, recorded as <revision>:<sha256>; the function in force is the file's.
    const repeatable = readdirSync(join(MIGRATIONS_DIR, REPEATABLE_SUBDIR)).filter((f) => f.endsWith('.sql'));
    expect(repeatable).toEqual(expect.arrayContaining(['match_documents.sql', 'semantic_cache_nearest.sql']));
    for (const f of repeatable) {
      const text = readFileSync(join(MIGRATIONS_DIR, REPEATABLE_SUBDIR, f), 'utf8');
      const revision = /^-- revision: (\d+)$/m.exec(text)![1];
      const { rows: rec } = await pool.query('SELECT checksum FROM schema_migrations WHERE name = $1', [`${REPEATABLE_SUBDIR}/${f}`]);
      expect(rec[0]?.checksum).toBe(`${revision}:${createHash('sha256').update(text).digest('hex')}`);
    }
    const body = (await pool.query("SELECT prosrc FROM pg_proc WHERE proname = 'match_documents'")).rows[0].prosrc as string;
    expect(readFileSync(join(MIGRATIONS_DIR, REPEATABLE_SUBDIR, 'match_documents.sql'), 'utf8')).toContain(body.trim());
  });

  it('applies a repeatable file after the versioned ones, again when its revision rises, never an older revision', async () => {
    const fn = `${tag}_rep`;
    const file = `${REPEATABLE_SUBDIR}/${tag}_rep.sql`;
    const def = (revision: number, answer: string) => `-- revision: ${revision}\nCREATE OR REPLACE FUNCTION ${fn}() RETURNS text LANGUAGE sql AS $$ SELECT '${answer}' || (SELECT count(*) FROM ${tag}_rep_t)::text $$;`;
    const answer = async () => (await pool.query(`SELECT ${fn}() AS a`)).rows[0].a as string;
    // The function reads a table a versioned file creates: it only applies if the versioned files went first.
    const dir = tempDir({ [`001_${tag}_rep_t.sql`]: `CREATE TABLE ${tag}_rep_t (id int);`, [file]: def(1, 'one') });
    expect(await migrate(pool, { dir })).toEqual([`001_${tag}_rep_t.sql`, file]);
    expect(await answer()).toBe('one0');
    expect(await migrate(pool, { dir })).toEqual([]);
    writeFileSync(join(dir, file), def(2, 'two'));
    expect(await migrate(pool, { dir })).toEqual([file]);
    expect(await answer()).toBe('two0');
    // An older process (revision 1) starting after a newer one leaves the newer definition in force.
    const older = tempDir({ [`001_${tag}_rep_t.sql`]: `CREATE TABLE ${tag}_rep_t (id int);`, [file]: def(1, 'one') });
    expect(await migrate(pool, { dir: older })).toEqual([]);
    expect(await answer()).toBe('two0');
    // The same revision with other text is a mistake: refused, naming the file, and nothing changes.
    writeFileSync(join(dir, file), def(2, 'changed'));
    const err = await migrate(pool, { dir }).catch((e) => e);
    expect(err).toBeInstanceOf(MigrationError);
    expect(err.file).toBe(file);
    expect(err.message).toMatch(/without raising its revision \(2\)/);
    expect(await answer()).toBe('two0');
    // A repeatable file without a revision line is refused before anything runs.
    writeFileSync(join(dir, file), `CREATE OR REPLACE FUNCTION ${fn}() RETURNS text LANGUAGE sql AS $$ SELECT 'x' $$;`);
    await expect(migrate(pool, { dir })).rejects.toThrow(/needs a "-- revision: N" line/);
    expect(await answer()).toBe('two0');
  });

  it('applies files in name order, once each', async () => {
    const dir = tempDir({
      [`002_${tag}_b.sql`]: `INSERT INTO ${tag}_log VALUES ('b');`,
      [`001_${tag}_a.sql`]: `CREATE TABLE ${tag}_log (v text); INSERT INTO ${tag}_log VALUES ('a');`,
    });
    expect(await migrate(pool, { dir })).toEqual([`001_${tag}_a.sql`, `002_${tag}_b.sql`]);
    expect(await migrate(pool, { dir })).toEqual([]);
    const { rows } = await pool.query(`SELECT v FROM ${tag}_log`);
    expect(rows.map((r) => r.v)).toEqual(['a', 'b']);
  });

  it('rolls back a broken file, names it with the Postgres message, and keeps earlier files', async () => {
    const good = `001_${tag}_good.sql`;
    const bad = `002_${tag}_bad.sql`;
    const dir = tempDir({
      [good]: `CREATE TABLE ${tag}_good (id int);`,
      [bad]: `CREATE TABLE ${tag}_partial (id int);\nSELECT * FROM ${tag}_no_such_table;`,
    });
    const err = await migrate(pool, { dir }).catch((e) => e);
    expect(err).toBeInstanceOf(MigrationError);
    expect(err.file).toBe(bad);
    expect(err.message).toContain(bad);
    expect(err.message).toContain(`${tag}_no_such_table`);
    expect(await tableExists(`${tag}_good`)).toBe(true);
    expect(await tableExists(`${tag}_partial`)).toBe(false);
    const { rows } = await pool.query('SELECT name FROM schema_migrations WHERE name = ANY($1)', [[good, bad]]);
    expect(rows.map((r) => r.name)).toEqual([good]);
    // The pool is still usable: no connection was left inside the failed transaction.
    expect((await pool.query('SELECT 1 AS one')).rows[0].one).toBe(1);
    // Fixing the file lets the next run apply it.
    writeFileSync(join(dir, bad), `CREATE TABLE ${tag}_partial (id int);`);
    expect(await migrate(pool, { dir })).toEqual([bad]);
  });

  it('refuses a file whose content changed after it was applied', async () => {
    const name = `001_${tag}_edit.sql`;
    const dir = tempDir({ [name]: `CREATE TABLE ${tag}_edit (id int);` });
    await migrate(pool, { dir });
    writeFileSync(join(dir, name), `CREATE TABLE ${tag}_edit (id int, extra text);`);
    const err = await migrate(pool, { dir }).catch((e) => e);
    expect(err).toBeInstanceOf(MigrationError);
    expect(err.message).toMatch(/checksum mismatch/);
    expect(err.file).toBe(name);
  });

  it('applies each file exactly once when several processes migrate at the same time', async () => {
    const files: Record<string, string> = {};
    files[`001_${tag}_c0.sql`] = `CREATE TABLE ${tag}_c (file text);`;
    for (let i = 1; i <= 4; i++) files[`00${i + 1}_${tag}_c${i}.sql`] = `INSERT INTO ${tag}_c VALUES ('c${i}');`;
    files[`${REPEATABLE_SUBDIR}/${tag}_c.sql`] = `-- revision: 3\nINSERT INTO ${tag}_c VALUES ('repeatable');`;
    const dir = tempDir(files);
    const pools = Array.from({ length: 4 }, () => createPool(databaseUrl(), { max: 1 }));
    try {
      const results = await Promise.all(pools.map((p) => migrate(p, { dir })));
      const all = results.flat();
      expect(all.sort()).toEqual(Object.keys(files).sort());
      const { rows } = await pool.query(`SELECT file, count(*)::int AS n FROM ${tag}_c GROUP BY file ORDER BY file`);
      expect(rows).toEqual([...[1, 2, 3, 4].map((i) => ({ file: `c${i}`, n: 1 })), { file: 'repeatable', n: 1 }]);
    } finally {
      await Promise.all(pools.map((p) => p.end()));
    }
  });
});
