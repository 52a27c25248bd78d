import type { AdminIdentity } from './admin-auth.js';

/** Whose usage a caller of the dashboard may see: every org, one org, or nothing. */
export type UsageScope = { kind: 'all' } | { kind: 'org'; orgId: string } | { kind: 'forbidden' };

/**
 * The dashboard's whole access decision, in one place so a change of roles is a change here: the
 * operator (ADMIN_TOKEN) sees every org; an org's admin key sees its own org; any other key nothing.
 */
export function usageScopeOf(who: AdminIdentity): UsageScope {
  if (who.via === 'token') return { kind: 'all' };
  if (who.role === 'admin') return { kind: 'org', orgId: who.orgId };
  return { kind: 'forbidden' };
}

/** The org a request reads (null: every org), or `allowed: false` when it names an org outside its scope. */
export function orgInScope(scope: Exclude<UsageScope, { kind: 'forbidden' }>, requested: string | undefined): { allowed: true; org: string | null } | { allowed: false } {
  if (scope.kind === 'all') return { allowed: true, org: requested ?? null };
  if (requested !== undefined && requested !== scope.orgId) return { allowed: false };
  return { allowed: true, org: scope.orgId };
}
