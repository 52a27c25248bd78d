import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApiKeyStore, hashApiKey } from '../src/shared/infra/db/api-keys.js';
import { MIGRATIONS_DIR } from '../src/shared/infra/db/migrate.js';
import { createPool } from '../src/shared/infra/db/pool.js';
import { databaseUrl } from './helpers/env.js';

const sql = (file: string) => readFileSync(join(MIGRATIONS_DIR, file), 'utf8');

/**
 * Migration 010 over keys as they were before the roles. The suite's database is shared and already
 * migrated, so the old tables are rebuilt by the real 002 file in a schema of this test's own, inside one
 * transaction that is rolled back (nothing outside it ever sees them), and the real 010 file runs over them.
 */
describe('migration 010: admin keys become org-admin keys', () => {
  let pool: pg.Pool;
  beforeAll(() => {
    pool = createPool(databaseUrl(), { max: 2 });
  });
  afterAll(() => pool?.end());

  it('maps every admin row to org-admin, keeps members, and the old keys still verify with their org', async () => {
    const schema = `m_${randomUUID().slice(0, 8)}`;
    const client = await pool.connect();
    try {
      await client.query('BEGIN');
      await client.query(`CREATE SCHEMA ${schema}`);
      await client.query(`SET LOCAL search_path TO ${schema}, public`);
      await client.query(sql('002_orgs_api_keys.sql'));
      // Old-style rows, as the code before 010 wrote them.
      const adminKey = `aq_${'a'.repeat(16)}_${'A'.repeat(32)}`;
      const memberKey = `aq_${'b'.repeat(16)}_${'B'.repeat(32)}`;
      await client.query("INSERT INTO orgs (id, name) VALUES ('acme', 'acme')");
      await client.query(
        `INSERT INTO api_keys (id, org_id, role, key_hash, prefix) VALUES ($1, 'acme', 'admin', $2, 'aq_a'), ($3, 'acme', 'member', $4, 'aq_b')`,
        ['a'.repeat(16), hashApiKey(adminKey), 'b'.repeat(16), hashApiKey(memberKey)],
      );
      // The positive control: before 010 the table holds the old role.
      expect((await client.query('SELECT role FROM api_keys ORDER BY id')).rows.map((r) => r.role)).toEqual(['admin', 'member']);

      await client.query(sql('010_roles.sql'));
      const { rows } = await client.query('SELECT id, org_id, role FROM api_keys ORDER BY id');
      expect(rows).toEqual([
        { id: 'a'.repeat(16), org_id: 'acme', role: 'org-admin' },
        { id: 'b'.repeat(16), org_id: 'acme', role: 'member' },
      ]);
      const keys = createApiKeyStore({ pool: client as unknown as pg.Pool });
      expect(await keys.verify(adminKey)).toEqual({ keyId: 'a'.repeat(16), orgId: 'acme', role: 'org-admin' });
      expect(await keys.verify(memberKey)).toEqual({ keyId: 'b'.repeat(16), orgId: 'acme', role: 'member' });
      // The new roles fit the migrated table, and the old one no longer does.
      const op = await keys.create({ role: 'operator' });
      expect(await keys.verify(op.key)).toEqual({ keyId: op.id, role: 'operator' });
      await client.query('SAVEPOINT old_role');
      await expect(client.query("UPDATE api_keys SET role = 'admin' WHERE id = $1", ['a'.repeat(16)])).rejects.toThrow(/api_keys_role_check/);
      await client.query('ROLLBACK TO SAVEPOINT old_role');
    } finally {
      await client.query('ROLLBACK');
      client.release();
    }
    expect((await pool.query('SELECT to_regnamespace($1) AS s', [schema])).rows[0].s).toBeNull();
  });
});
