import type { FastifyRequest } from 'fastify';
import { LRUCache } from 'lru-cache';
import { HttpError } from './http-errors.js';

export interface Principal {
  keyId: string;
  orgId: string;
  role: 'member' | 'admin';
}

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

/** The authenticated caller of a `/v1` request (set by the auth hook); 401 if there is none. */
export function principalOf(req: FastifyRequest): Principal {
  if (!req.principal) throw new HttpError(401, 'unauthenticated');
  return req.principal;
}
