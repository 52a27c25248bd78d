import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseKeysArgs } from '../src/app/cli/keys.js';
import { createApiKeyStore } from '../src/shared/infra/db/api-keys.js';
import { migrate } from '../src/shared/infra/db/migrate.js';
import { createPool } from '../src/shared/infra/db/pool.js';
import { databaseUrl, randomOrg } from './helpers/env.js';
import { runCli } from './helpers/run-cli.js';

// Each test starts the CLI as a process (tsx, Postgres): minutes, not seconds, on a busy machine.
describe('keys CLI', { timeout: 240_000 }, () => {
  let pool: pg.Pool;
  const keysCli = (args: string[]) => runCli('src/app/cli/keys.ts', args, { DATABASE_URL: databaseUrl() });
  beforeAll(async () => {
    pool = createPool(databaseUrl(), { max: 2 });
    await migrate(pool);
  });
  afterAll(() => pool.end());

  it('creates a key printed once, lists it without the secret, and revokes it', async () => {
    const org = randomOrg();
    const created = await keysCli(['create', '--org', org, '--org-admin']);
    expect(created.code).toBe(0);
    const key = created.stdout.trim();
    expect(key).toMatch(/^aq_[0-9a-f]{16}_[A-Za-z0-9_-]{32}$/);
    expect(created.stderr).not.toContain(key);
    const store = createApiKeyStore({ pool });
    const verified = await store.verify(key);
    expect(verified).toMatchObject({ orgId: org, role: 'org-admin' });

    const listed = await keysCli(['list', '--org', org]);
    expect(listed.code).toBe(0);
    expect(listed.stdout).toContain(verified!.keyId);
    expect(listed.stdout).toContain('active');
    expect(listed.stdout + listed.stderr).not.toContain(key.slice('aq_'.length + 17));

    const revoked = await keysCli(['revoke', verified!.keyId]);
    expect(revoked.code).toBe(0);
    expect(await store.verify(key)).toBeNull();
    const again = await keysCli(['revoke', verified!.keyId]);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain('no active key');
  });

  it('creates an operator key with no org, and lists it among the operator keys', async () => {
    const created = await keysCli(['create', '--operator']);
    expect(created.code).toBe(0);
    const key = created.stdout.trim();
    expect(created.stderr).toContain('created operator key');
    expect(created.stderr).not.toContain(key);
    const verified = await createApiKeyStore({ pool }).verify(key);
    expect(verified).toEqual({ keyId: expect.any(String), role: 'operator' });
    const listed = await keysCli(['list', '--operator']);
    expect(listed.code).toBe(0);
    expect(listed.stdout).toMatch(new RegExp(`${verified!.keyId}\\t\\S+\\toperator\\t`));
    expect(listed.stdout + listed.stderr).not.toContain(key.slice(-32));
  });

  it("runs with LOG_LEVEL='' (a template's unset), at the CLI's default level", async () => {
    const listed = await runCli('src/app/cli/keys.ts', ['list', '--operator'], { DATABASE_URL: databaseUrl(), LOG_LEVEL: '' });
    expect(listed.stderr).toBe('');
    expect(listed.code).toBe(0);
  });

  it('parses commands and rejects bad usage with exit 2', async () => {
    expect(parseKeysArgs(['create', '--org', 'acme'])).toEqual({ cmd: 'create', orgId: 'acme', role: 'member' });
    expect(parseKeysArgs(['create', '--org', 'acme', '--org-admin'])).toEqual({ cmd: 'create', orgId: 'acme', role: 'org-admin' });
    // `--admin` predates the roles and made an org's key: it is org-admin, as migration 010 maps old rows.
    expect(parseKeysArgs(['create', '--org', 'acme', '--admin'])).toEqual({ cmd: 'create', orgId: 'acme', role: 'org-admin' });
    expect(parseKeysArgs(['create', '--operator'])).toEqual({ cmd: 'create', role: 'operator' });
    expect(() => parseKeysArgs(['create', '--operator', '--org', 'acme'])).toThrow(/no --org/);
    expect(() => parseKeysArgs(['create', '--operator', '--org-admin'])).toThrow(/no --org/);
    expect(parseKeysArgs(['list', '--org', 'acme'])).toEqual({ cmd: 'list', orgId: 'acme' });
    expect(parseKeysArgs(['list', '--operator'])).toEqual({ cmd: 'list', orgId: null });
    expect(() => parseKeysArgs(['list', '--operator', '--org', 'acme'])).toThrow(/not both/);
    expect(parseKeysArgs(['revoke', 'abc'])).toEqual({ cmd: 'revoke', keyId: 'abc' });
    expect(() => parseKeysArgs(['create'])).toThrow(/--org/);
    expect(() => parseKeysArgs(['create', '--org', 'a b'])).toThrow(/--org may only/);
    expect(() => parseKeysArgs(['revoke'])).toThrow(/exactly one KEY_ID/);
    expect(() => parseKeysArgs(['create', '--org', 'a', '--bogus'])).toThrow(/bogus/);
    expect(() => parseKeysArgs([])).toThrow(/missing command/);
    const res = await keysCli(['frobnicate']);
    expect(res.code).toBe(2);
    expect(res.stderr).toContain('usage:');
  });
});
