/**
 * Who a credential is. `member` and `org-admin` are tenants: every key of theirs belongs to one org and acts
 * only inside it. `operator` runs the platform (Bull Board, /metrics, shared knowledge, every org's DLQ,
 * org plans); it has no org, so it is never mistaken for a tenant. README "Roles" has the table.
 */
export const ROLES = ['member', 'org-admin', 'operator'] as const;
export type Role = (typeof ROLES)[number];

export const TENANT_ROLES = ['member', 'org-admin'] as const;
export type TenantRole = (typeof TENANT_ROLES)[number];

export const isRole = (r: unknown): r is Role => ROLES.includes(r as Role);
