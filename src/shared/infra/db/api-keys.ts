import { createHash, randomBytes } from 'node:crypto';
import type pg from 'pg';
import type { Role, TenantRole } from '../../core/roles.js';

export type ApiKeyRole = Role;

export interface ApiKeyInfo {
  id: string;
  /** null for an operator key: the operator belongs to no org. */
  orgId: string | null;
  role: ApiKeyRole;
  /** Safe to display: `aq_<id>`. The secret part is never stored. */
  prefix: string;
  createdAt: Date;
  revokedAt: Date | null;
}

/** A tenant key acts inside its org; an operator key has none (migration 010 keeps the two consistent). */
export type VerifiedKey = { keyId: string; orgId: string; role: TenantRole } | { keyId: string; orgId?: undefined; role: 'operator' };

/** Whose key to create: a tenant of one org, or an operator (no org). */
export type NewKey = { orgId: string; role?: TenantRole } | { orgId?: undefined; role: 'operator' };

/** A key's id, the `<id>` of `aq_<id>_<secret>`: 8 random bytes in lowercase hex (see `create`). */
const KEY_ID = '[0-9a-f]{16}';
export const KEY_ID_PATTERN = new RegExp(`^${KEY_ID}$`);
const KEY_PATTERN = new RegExp(`^aq_${KEY_ID}_[A-Za-z0-9_-]{32}$`);

export const hashApiKey = (key: string): string => createHash('sha256').update(key).digest('hex');

type KeyRow = { id: string; org_id: string | null; role: ApiKeyRole; prefix: string; created_at: Date; revoked_at: Date | null };
const info = (r: KeyRow): ApiKeyInfo => ({ id: r.id, orgId: r.org_id, role: r.role, prefix: r.prefix, createdAt: r.created_at, revokedAt: r.revoked_at });

/**
 * API keys are `aq_<id>_<32 base64url chars>` (192 random bits). Only their sha256 is stored: a key is
 * high-entropy, so a fast hash is enough and lookups stay an index hit. Keys are never logged; `create` is
 * the only place the secret exists, and it is returned once.
 */
export function createApiKeyStore({ pool }: { pool: pg.Pool }) {
  return {
    async create(spec: NewKey): Promise<{ id: string; key: string; prefix: string; role: ApiKeyRole; orgId: string | null; createdAt: Date }> {
      const role: ApiKeyRole = spec.role ?? 'member';
      const orgId = role === 'operator' ? null : (spec.orgId ?? null);
      if (role !== 'operator' && !orgId) throw new TypeError('orgId is required');
      if (role === 'operator' && spec.orgId) throw new TypeError('an operator key belongs to no org');
      const id = randomBytes(8).toString('hex');
      const key = `aq_${id}_${randomBytes(24).toString('base64url')}`;
      const prefix = `aq_${id}`;
      const { rows } = orgId
        ? await pool.query<{ created_at: Date }>(
            `WITH org AS (INSERT INTO orgs (id, name) VALUES ($2, $2) ON CONFLICT (id) DO NOTHING)
             INSERT INTO api_keys (id, org_id, role, key_hash, prefix) VALUES ($1, $2, $3, $4, $5) RETURNING created_at`,
            [id, orgId, role, hashApiKey(key), prefix],
          )
        : await pool.query<{ created_at: Date }>('INSERT INTO api_keys (id, org_id, role, key_hash, prefix) VALUES ($1, NULL, $2, $3, $4) RETURNING created_at', [
            id,
            role,
            hashApiKey(key),
            prefix,
          ]);
      return { id, key, prefix, role, orgId, createdAt: rows[0].created_at };
    },

    async verify(key: string): Promise<VerifiedKey | null> {
      if (typeof key !== 'string' || !KEY_PATTERN.test(key)) return null;
      const { rows } = await pool.query<{ id: string; org_id: string | null; role: ApiKeyRole }>(
        'SELECT id, org_id, role FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL',
        [hashApiKey(key)],
      );
      const r = rows[0];
      if (!r) return null;
      if (r.role === 'operator') return { keyId: r.id, role: 'operator' };
      // The table's CHECK ties a tenant role to an org; a row that broke it would be refused, not widened.
      return r.org_id ? { keyId: r.id, orgId: r.org_id, role: r.role } : null;
    },

    /**
     * Revokes an active key; with `orgId`, only that org's (an org-admin's revocation): another org's key
     * answers exactly like an unknown one. Returns the revoked key, or null.
     */
    async revoke(id: string, scope: { orgId?: string } = {}): Promise<ApiKeyInfo | null> {
      const { rows } = await pool.query<KeyRow>(
        `UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL AND ($2::text IS NULL OR org_id = $2)
         RETURNING id, org_id, role, prefix, created_at, revoked_at`,
        [id, scope.orgId ?? null],
      );
      return rows[0] ? info(rows[0]) : null;
    },

    /** An org's keys, or with null the operator keys; ids and prefixes only, never a secret. */
    async list(orgId: string | null): Promise<ApiKeyInfo[]> {
      const { rows } = await pool.query<KeyRow>(
        'SELECT id, org_id, role, prefix, created_at, revoked_at FROM api_keys WHERE org_id IS NOT DISTINCT FROM $1 ORDER BY created_at, id',
        [orgId],
      );
      return rows.map(info);
    },
  };
}

export type ApiKeyStore = ReturnType<typeof createApiKeyStore>;
