import type { Principal } from './auth.js';

/** Whose usage a caller of the dashboard may see: every org, one org, or nothing. */
export type UsageScope = { kind: 'all' } | { kind: 'org'; orgId: string } | { kind: 'forbidden' };

/**
 * The dashboard's whole data-scope decision, in one place: the operator (an operator key or ADMIN_TOKEN)
 * sees every org; an org-admin its own org; a member nothing (the route table refuses it first: 403).
 */
export function usageScopeOf(who: Principal): UsageScope {
  if (who.role === 'operator') return { kind: 'all' };
  if (who.role === 'org-admin') return { kind: 'org', orgId: who.orgId };
  return { kind: 'forbidden' };
}

/** The org a request reads (null: every org), or `allowed: false` when it names an org outside its scope. */
export function orgInScope(scope: Exclude<UsageScope, { kind: 'forbidden' }>, requested: string | undefined): { allowed: true; org: string | null } | { allowed: false } {
  if (scope.kind === 'all') return { allowed: true, org: requested ?? null };
  if (requested !== undefined && requested !== scope.orgId) return { allowed: false };
  return { allowed: true, org: scope.orgId };
}
