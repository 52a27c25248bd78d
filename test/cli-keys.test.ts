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
    const created = await keysCli(['create', '--org', org, '--admin']);
    expect(created.code).toBe(0);
    const key = created.stdout.trim();
    expect(key).toMatch(/^aq_[0-9a-f]{16}_[A-Za-z0-9_-]{32}$/);
    expect(created.stderr).not.toContain(key);
    const store = createApiKeyStore({ pool });
    const verified = await store.verify(key);
    expect(verified).toMatchObject({ orgId: org, role: 'admin' });

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

  it('parses commands and rejects bad usage with exit 2', async () => {
    expect(parseKeysArgs(['create', '--org', 'acme'])).toEqual({ cmd: 'create', orgId: 'acme', admin: false });
    expect(parseKeysArgs(['list', '--org', 'acme'])).toEqual({ cmd: 'list', orgId: 'acme' });
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
