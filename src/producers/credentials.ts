import { createHash, timingSafeEqual } from 'node:crypto';
import type { KeyVerifier, Principal } from './auth.js';

const digest = (s: string) => createHash('sha256').update(s).digest();
/** Compares digests, so neither the length nor a prefix of the token leaks through timing. */
const sameSecret = (a: string, b: string) => timingSafeEqual(digest(a), digest(b));

function parseAuthorization(header: string | undefined): { scheme: 'bearer' | 'basic'; user?: string; secret: string } | undefined {
  if (!header) return undefined;
  const bearer = /^Bearer\s+(\S{1,512})$/i.exec(header.trim());
  if (bearer) return { scheme: 'bearer', secret: bearer[1] };
  const basic = /^Basic\s+([A-Za-z0-9+/=]{1,1024})$/i.exec(header.trim());
  if (!basic) return undefined;
  const text = Buffer.from(basic[1], 'base64').toString('utf8');
  const colon = text.indexOf(':');
  if (colon < 0) return undefined;
  return { scheme: 'basic', user: text.slice(0, colon), secret: text.slice(colon + 1) };
}

/**
 * Turns an Authorization header into a principal. A bearer API key is whatever its row says; the
 * ADMIN_TOKEN is an operator. `basic` (operator routes only, for browsers: Bull Board) also takes basic
 * auth: user `admin` with the ADMIN_TOKEN, or any user with an API key as the password.
 */
export function createCredentials(deps: { adminToken?: string; keys: KeyVerifier }) {
  return {
    async identify(header: string | undefined, opts: { basic: boolean }): Promise<Principal | undefined> {
      const cred = parseAuthorization(header);
      if (!cred || (cred.scheme === 'basic' && !opts.basic)) return undefined;
      const tokenUser = cred.scheme === 'bearer' || cred.user === 'admin';
      if (deps.adminToken && tokenUser && sameSecret(cred.secret, deps.adminToken)) return { role: 'operator' };
      return (await deps.keys.verify(cred.secret)) ?? undefined;
    },
  };
}

export type Credentials = ReturnType<typeof createCredentials>;
