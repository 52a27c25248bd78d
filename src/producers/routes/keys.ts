import { NotFoundError } from '../../shared/core/errors.js';
import type { ApiKeyInfo, ApiKeyStore } from '../../shared/infra/db/api-keys.js';
import { principalOf } from '../auth.js';
import type { Handler } from '../route-spec.js';
import type { keyCreateBody, keyIdParam } from '../schemas/keys.js';

export interface KeyRouteDeps {
  keys: Pick<ApiKeyStore, 'create' | 'list' | 'revoke'>;
}

const view = (k: ApiKeyInfo) => ({ id: k.id, prefix: k.prefix, role: k.role, createdAt: k.createdAt.toISOString(), revokedAt: k.revokedAt?.toISOString() ?? null });

/** The org's keys, revoked ones included (so an org-admin can audit them); ids and prefixes only. */
export const listKeys =
  (deps: KeyRouteDeps): Handler<object> =>
  async (req) => ({ keys: (await deps.keys.list(principalOf(req).orgId)).map(view) });

/**
 * A key of the caller's org. The secret is in this answer and nowhere else: the store keeps its sha256 and
 * the log line names the key by id.
 */
export const createKey =
  (deps: KeyRouteDeps): Handler<{ body: typeof keyCreateBody }> =>
  async (req, reply) => {
    const { orgId, keyId: by } = principalOf(req);
    const role = req.body?.role ?? 'member';
    const created = await deps.keys.create({ orgId, role });
    req.log.info({ keyId: created.id, role, by }, 'api key created');
    return reply.code(201).send({ id: created.id, prefix: created.prefix, role, orgId, createdAt: created.createdAt.toISOString(), key: created.key });
  };

/** Another org's key, an unknown id and an already revoked key all answer 404. */
export const revokeKey =
  (deps: KeyRouteDeps): Handler<{ params: typeof keyIdParam }> =>
  async (req) => {
    const { orgId, keyId: by } = principalOf(req);
    const revoked = await deps.keys.revoke(req.params.id, { orgId });
    if (!revoked) throw new NotFoundError('no active key with this id in the org');
    req.log.info({ keyId: revoked.id, by }, 'api key revoked');
    return view(revoked);
  };
