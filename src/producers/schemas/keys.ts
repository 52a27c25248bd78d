import { z } from 'zod';
import { ROLES, TENANT_ROLES } from '../../shared/core/roles.js';
import { KEY_ID_PATTERN } from '../../shared/infra/db/api-keys.js';

export const keyInfo = z.object({
  id: z.string(),
  prefix: z.string().describe('`aq_<id>`: safe to display; the secret part is never stored'),
  role: z.enum(ROLES),
  createdAt: z.iso.datetime(),
  revokedAt: z.iso.datetime().nullable(),
});
export const keyList = z.object({ keys: z.array(keyInfo) });

/**
 * A key's id as the store makes it (16 hex characters, the `<id>` of `aq_<id>_...`): anything else is a 400
 * naming `id`, never a query (Postgres refuses text holding a NUL, which would be a 500).
 */
export const keyIdParam = z.object({ id: z.string().regex(KEY_ID_PATTERN, 'a key id is 16 lowercase hex characters (the <id> of aq_<id>_...)') });

/** An org-admin makes keys of its own org only, and never an operator key. The body may be left out. */
export const keyCreateBody = z
  .object({ role: z.enum(TENANT_ROLES).default('member').describe('`member` (default) or `org-admin`') })
  .strict()
  .nullable();

export const keyCreated = keyInfo.omit({ revokedAt: true }).extend({
  orgId: z.string(),
  key: z.string().describe('The secret: shown in this answer only, never again (only its sha256 is stored)'),
});
