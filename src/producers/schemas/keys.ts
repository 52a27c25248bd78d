import { z } from 'zod';
import { ROLES, TENANT_ROLES } from '../../shared/core/roles.js';

export const keyInfo = z.object({
  id: z.string(),
  prefix: z.string().describe('`aq_<id>`: safe to display; the secret part is never stored'),
  role: z.enum(ROLES),
  createdAt: z.iso.datetime(),
  revokedAt: z.iso.datetime().nullable(),
});
export const keyList = z.object({ keys: z.array(keyInfo) });

/** An org-admin makes keys of its own org only, and never an operator key. The body may be left out. */
export const keyCreateBody = z
  .object({ role: z.enum(TENANT_ROLES).default('member').describe('`member` (default) or `org-admin`') })
  .strict()
  .nullable();

export const keyCreated = keyInfo.omit({ revokedAt: true }).extend({
  orgId: z.string(),
  key: z.string().describe('The secret: shown in this answer only, never again (only its sha256 is stored)'),
});
