import type { FastifyRequest } from 'fastify';
import { LRUCache } from 'lru-cache';
import type { TenantRole } from '../shared/core/roles.js';
import { HttpError } from './http-errors.js';

/** A member or org-admin: acts inside its one org. */
export interface TenantPrincipal {
  keyId: string;
  orgId: string;
  role: TenantRole;
}

/** The platform operator: an operator key, or the ADMIN_TOKEN (no keyId). It belongs to no org. */
export interface OperatorPrincipal {
  keyId?: string;
  orgId?: undefined;
  role: 'operator';
}

export type Principal = TenantPrincipal | OperatorPrincipal;

export interface KeyVerifier {
  verify(key: string): Promise<Principal | null>;
}

/**
 * Remembers successful verifications for `ttlMs` so the hot enqueue path does not hit Postgres on every
 * request. A revoked key therefore stops working within `ttlMs` on every API process (0 disables this).
 */
export function cachedVerifier(inner: KeyVerifier, ttlMs: number): KeyVerifier {
  if (ttlMs <= 0) return inner;
  // fetchMethod also coalesces concurrent misses for one key into one lookup. Unknown keys are not cached
  // (undefined), so a key created a moment ago works at once.
  const cache = new LRUCache<string, Principal>({ max: 10_000, ttl: ttlMs, fetchMethod: async (key) => (await inner.verify(key)) ?? undefined });
  return {
    async verify(key) {
      return (await cache.fetch(key)) ?? null;
    },
  };
}

export function bearerToken(header: string | undefined): string | undefined {
  if (!header) return undefined;
  const match = /^Bearer\s+(\S{1,512})$/i.exec(header.trim());
  return match?.[1];
}

/** The authenticated caller of a route, whatever its role (set by the auth hook); 401 if there is none. */
export function callerOf(req: FastifyRequest): Principal {
  if (!req.principal) throw new HttpError(401, 'unauthenticated');
  return req.principal;
}

/**
 * The tenant calling an org route. The route table admits only tenants to such routes (an operator has no
 * org), so the 403 here is a second line, never the decision.
 */
export function principalOf(req: FastifyRequest): TenantPrincipal {
  const p = callerOf(req);
  if (p.role === 'operator') throw new HttpError(403, 'an operator has no org: use a key of the org');
  return p;
}
