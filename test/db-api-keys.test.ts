import { createHash } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApiKeyStore } from '../src/shared/infra/db/api-keys.js';
import { migrate } from '../src/shared/infra/db/migrate.js';
import { createOrgStore } from '../src/shared/infra/db/orgs.js';
import { createPool } from '../src/shared/infra/db/pool.js';
import { databaseUrl, randomOrg } from './helpers/env.js';

describe('api keys and orgs', () => {
  let pool: pg.Pool;
  beforeAll(async () => {
    pool = createPool(databaseUrl(), { max: 2 });
    await migrate(pool);
  });
  afterAll(() => pool.end());

  it('creates a key that verifies to its org and role, storing only its sha256', async () => {
    const keys = createApiKeyStore({ pool });
    const orgId = randomOrg();
    const { id, key } = await keys.create({ orgId, role: 'org-admin' });
    expect(key).toMatch(new RegExp(`^aq_${id}_[A-Za-z0-9_-]{32}$`));
    expect(await keys.verify(key)).toEqual({ keyId: id, orgId, role: 'org-admin' });

    const { rows } = await pool.query('SELECT * FROM api_keys WHERE id = $1', [id]);
    expect(rows[0].key_hash).toBe(createHash('sha256').update(key).digest('hex'));
    const secret = key.slice('aq_'.length + 17);
    expect(JSON.stringify(rows[0])).not.toContain(secret);
    expect(rows[0].prefix).toBe(`aq_${id}`);

    // Creating a key also created the org, with defaults.
    const org = await createOrgStore({ pool }).get(orgId);
    expect(org).toMatchObject({ id: orgId, ratePlan: 'general', dailyJobLimit: null, monthlyBudgetUsd: null });
  });

  it('rejects unknown, malformed and tampered keys', async () => {
    const keys = createApiKeyStore({ pool });
    const { key } = await keys.create({ orgId: randomOrg() });
    const last = key.at(-1) === 'A' ? 'B' : 'A';
    expect(await keys.verify(`${key.slice(0, -1)}${last}`)).toBeNull();
    expect(await keys.verify('aq_nope')).toBeNull();
    expect(await keys.verify('')).toBeNull();
  });

  it('revokes a key once; a revoked key no longer verifies; list shows both states', async () => {
    const keys = createApiKeyStore({ pool });
    const orgId = randomOrg();
    const a = await keys.create({ orgId });
    const b = await keys.create({ orgId });
    // Scoped to another org (an org-admin's revocation), the key is not found and stays active.
    expect(await keys.revoke(a.id, { orgId: randomOrg() })).toBeNull();
    expect(await keys.verify(a.key)).toMatchObject({ keyId: a.id });
    expect(await keys.revoke(a.id, { orgId })).toMatchObject({ id: a.id, orgId, revokedAt: expect.any(Date) });
    expect(await keys.revoke(a.id)).toBeNull();
    expect(await keys.revoke('no-such-id')).toBeNull();
    expect(await keys.verify(a.key)).toBeNull();
    expect(await keys.verify(b.key)).toMatchObject({ keyId: b.id, role: 'member' });

    const listed = await keys.list(orgId);
    expect(listed.map((k) => k.id).sort()).toEqual([a.id, b.id].sort());
    expect(listed.find((k) => k.id === a.id)!.revokedAt).toBeInstanceOf(Date);
    expect(listed.find((k) => k.id === b.id)!.revokedAt).toBeNull();
    expect(await keys.list(randomOrg())).toEqual([]);
  });

  it('makes operator keys with no org, and the table refuses a role without its org rule', async () => {
    const keys = createApiKeyStore({ pool });
    const op = await keys.create({ role: 'operator' });
    expect(op.orgId).toBeNull();
    expect(await keys.verify(op.key)).toEqual({ keyId: op.id, role: 'operator' });
    expect((await keys.list(null)).map((k) => k.id)).toContain(op.id);
    await expect(keys.create({ orgId: randomOrg(), role: 'operator' } as never)).rejects.toThrow(/no org/);
    await expect(keys.create({ orgId: '' })).rejects.toThrow(/orgId is required/);
    // The CHECKs of migration 010: the old `admin` role is gone; a tenant has an org; an operator has none.
    const insert = (role: string, org: string | null) =>
      pool.query("INSERT INTO api_keys (id, org_id, role, key_hash, prefix) VALUES ($1, $2, $3, repeat('a', 64), 'x')", [randomOrg(), org, role]);
    const org = randomOrg();
    await createOrgStore({ pool }).upsert({ id: org });
    await expect(insert('admin', org)).rejects.toThrow(/api_keys_role_check/);
    await expect(insert('member', null)).rejects.toThrow(/api_keys_org_by_role/);
    await expect(insert('operator', org)).rejects.toThrow(/api_keys_org_by_role/);
  });

  it('upserts orgs, changing only the fields given and clearing a limit with null', async () => {
    const orgs = createOrgStore({ pool });
    const id = randomOrg();
    await orgs.upsert({ id, ratePlan: 'ai_pro', dailyJobLimit: 10, monthlyBudgetUsd: 12.5 });
    expect(await orgs.upsert({ id, dailyJobLimit: 20 })).toMatchObject({ ratePlan: 'ai_pro', dailyJobLimit: 20, monthlyBudgetUsd: 12.5 });
    expect(await orgs.upsert({ id, monthlyBudgetUsd: null })).toMatchObject({ dailyJobLimit: 20, monthlyBudgetUsd: null });
    expect(await orgs.get(randomOrg())).toBeNull();
  });
});
