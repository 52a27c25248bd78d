import { parseArgs } from 'node:util';
import { config } from '../../shared/core/config.js';
import { createApiKeyStore, type ApiKeyStore } from '../../shared/infra/db/api-keys.js';
import { migrate } from '../../shared/infra/db/migrate.js';
import { dbTimeoutsOf } from '../../shared/infra/db/pool.js';
import { openSharedDatabase } from '../../shared/infra/db/shared-embedded.js';
import { AgentqError } from '../../shared/core/errors.js';
import type { TenantRole } from '../../shared/core/roles.js';
import { ORG_ID } from '../../shared/fair/org-plan-schema.js';
import { createCliLogger, runCliIfMain } from './run-cli.js';

const USAGE = `usage:
  npm run keys -- create --org ORG [--org-admin]   create a member (or org-admin) key of ORG (printed once, never stored)
  npm run keys -- create --operator                create an operator key: the platform's, it belongs to no org
  npm run keys -- revoke KEY_ID                    revoke a key
  npm run keys -- list --org ORG | --operator      list an org's keys, or the operator keys (ids and prefixes only)`;

export class UsageError extends AgentqError {
  constructor(message: string) {
    super(message, 'EUSAGE');
  }
}

export type KeysCommand =
  | { cmd: 'create'; orgId: string; role: TenantRole }
  | { cmd: 'create'; role: 'operator' }
  | { cmd: 'revoke'; keyId: string }
  /** `orgId: null` lists the operator keys. */
  | { cmd: 'list'; orgId: string | null };

export function parseKeysArgs(argv: string[]): KeysCommand {
  const [cmd, ...rest] = argv;
  let parsed;
  try {
    parsed = parseArgs({
      args: rest,
      allowPositionals: true,
      options: { org: { type: 'string' }, 'org-admin': { type: 'boolean' }, admin: { type: 'boolean' }, operator: { type: 'boolean' } },
    });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const { values, positionals } = parsed;
  // `--admin` predates the roles: it made an org's key, so it means org-admin (as migration 010 maps old rows).
  const orgAdmin = values['org-admin'] === true || values.admin === true;
  const operator = values.operator === true;
  const org = () => {
    if (!values.org) throw new UsageError(`${cmd} needs --org ORG${cmd === 'create' || cmd === 'list' ? ' (or --operator)' : ''}`);
    if (!ORG_ID.test(values.org)) throw new UsageError('--org may only contain letters, digits and _ . : - (max 128)');
    return values.org;
  };
  if (positionals.length && cmd !== 'revoke') throw new UsageError(`unexpected argument ${positionals[0]}`);
  switch (cmd) {
    case 'create':
      if (operator) {
        if (values.org || orgAdmin) throw new UsageError('--operator makes a platform key: it takes no --org and no --org-admin');
        return { cmd, role: 'operator' };
      }
      return { cmd, orgId: org(), role: orgAdmin ? 'org-admin' : 'member' };
    case 'list':
      if (orgAdmin) throw new UsageError('--org-admin only applies to create');
      if (operator) {
        if (values.org) throw new UsageError('list takes --org ORG or --operator, not both');
        return { cmd, orgId: null };
      }
      return { cmd, orgId: org() };
    case 'revoke':
      if (positionals.length !== 1 || values.org || orgAdmin || operator) throw new UsageError('revoke takes exactly one KEY_ID');
      return { cmd, keyId: positionals[0] };
    default:
      throw new UsageError(cmd ? `unknown command ${cmd}` : 'missing command');
  }
}

/** Runs one command; returns the exit code. Only `create` ever prints a key, to `out`, once. */
export async function runKeys(c: KeysCommand, keys: ApiKeyStore, io: { out: (s: string) => void; err: (s: string) => void }): Promise<number> {
  switch (c.cmd) {
    case 'create': {
      const { id, key } = await keys.create(c.role === 'operator' ? { role: 'operator' } : { orgId: c.orgId, role: c.role });
      const whose = c.role === 'operator' ? 'the platform (no org)' : `org ${c.orgId}`;
      io.err(`created ${c.role} key ${id} for ${whose}; store it now, it cannot be shown again\n`);
      io.out(`${key}\n`);
      return 0;
    }
    case 'revoke': {
      const revoked = await keys.revoke(c.keyId);
      if (!revoked) {
        io.err(`no active key with id ${c.keyId}\n`);
        return 1;
      }
      io.out(`revoked ${c.keyId}\n`);
      return 0;
    }
    case 'list': {
      const rows = await keys.list(c.orgId);
      if (!rows.length) io.err(c.orgId === null ? 'there are no operator keys\n' : `org ${c.orgId} has no keys\n`);
      for (const k of rows) {
        const state = k.revokedAt ? `revoked ${k.revokedAt.toISOString()}` : 'active';
        io.out(`${k.id}\t${k.prefix}…\t${k.role}\t${k.createdAt.toISOString()}\t${state}\n`);
      }
      return 0;
    }
  }
}

async function main(argv: string[]): Promise<number> {
  let command: KeysCommand;
  try {
    command = parseKeysArgs(argv);
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n${USAGE}\n`);
    return 2;
  }
  const cfg = config();
  const logger = createCliLogger(cfg);
  const db = await openSharedDatabase({ databaseUrl: cfg.DATABASE_URL, dataDir: cfg.DATA_DIR, pglitePort: cfg.PGLITE_PORT, pgliteSharedBuffers: cfg.PGLITE_SHARED_BUFFERS, pglitePrewarm: false, logger, timeouts: dbTimeoutsOf(cfg) });
  try {
    await migrate(db.longPool, { logger });
    return await runKeys(command, createApiKeyStore({ pool: db.pool }), {
      out: (s) => process.stdout.write(s),
      err: (s) => process.stderr.write(s),
    });
  } catch (err) {
    process.stderr.write(`keys ${command.cmd} failed: ${(err as Error).message}\n`);
    return 1;
  } finally {
    await db.close();
  }
}

runCliIfMain(import.meta.url, main);
