import { createHash, randomBytes } from 'node:crypto';
import type pg from 'pg';

export type ApiKeyRole = 'member' | 'admin';

export interface ApiKeyInfo {
  id: string;
  orgId: string;
  role: ApiKeyRole;
  /** Safe to display: `aq_<id>`. The secret part is never stored. */
  prefix: string;
  createdAt: Date;
  revokedAt: Date | null;
}

export interface VerifiedKey {
  keyId: string;
  orgId: string;
  role: ApiKeyRole;
}

const KEY_PATTERN = /^aq_[0-9a-f]{16}_[A-Za-z0-9_-]{32}$/;

export const hashApiKey = (key: string): string => createHash('sha256').update(key).digest('hex');

/**
 * API keys are `aq_<id>_<32 base64url chars>` (192 random bits). Only their sha256 is stored: a key is
 * high-entropy, so a fast hash is enough and lookups stay an index hit. Keys are never logged.
 */
export function createApiKeyStore({ pool }: { pool: pg.Pool }) {
  return {
    async create({ orgId, role = 'member' }: { orgId: string; role?: ApiKeyRole }): Promise<{ id: string; key: string }> {
      if (!orgId) throw new TypeError('orgId is required');
      const id = randomBytes(8).toString('hex');
      const key = `aq_${id}_${randomBytes(24).toString('base64url')}`;
      await pool.query(
        `WITH org AS (INSERT INTO orgs (id, name) VALUES ($2, $2) ON CONFLICT (id) DO NOTHING)
         INSERT INTO api_keys (id, org_id, role, key_hash, prefix) VALUES ($1, $2, $3, $4, $5)`,
        [id, orgId, role, hashApiKey(key), `aq_${id}`],
      );
      return { id, key };
    },

    async verify(key: string): Promise<VerifiedKey | null> {
      if (typeof key !== 'string' || !KEY_PATTERN.test(key)) return null;
      const { rows } = await pool.query<{ id: string; org_id: string; role: ApiKeyRole }>(
        'SELECT id, org_id, role FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL',
        [hashApiKey(key)],
      );
      return rows[0] ? { keyId: rows[0].id, orgId: rows[0].org_id, role: rows[0].role } : null;
    },

    /** True when an active key was revoked; false for an unknown or already revoked id. */
    async revoke(id: string): Promise<boolean> {
      const res = await pool.query('UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL', [id]);
      return res.rowCount === 1;
    },

    async list(orgId: string): Promise<ApiKeyInfo[]> {
      const { rows } = await pool.query<{ id: string; org_id: string; role: ApiKeyRole; prefix: string; created_at: Date; revoked_at: Date | null }>(
        'SELECT id, org_id, role, prefix, created_at, revoked_at FROM api_keys WHERE org_id = $1 ORDER BY created_at, id',
        [orgId],
      );
      return rows.map((r) => ({ id: r.id, orgId: r.org_id, role: r.role, prefix: r.prefix, createdAt: r.created_at, revokedAt: r.revoked_at }));
    },
  };
}

export type ApiKeyStore = ReturnType<typeof createApiKeyStore>;
