import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { KeyVerifier } from './auth.js';

export type AdminIdentity = { via: 'token' } | { via: 'key'; keyId: string; orgId: string; role: 'member' | 'admin' };

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
 * Who may open the operator surfaces (Bull Board, /metrics): the admin token, as a bearer token or as
 * basic auth `admin:<ADMIN_TOKEN>` (what a browser can send), or an API key — bearer, or as the basic-auth
 * password — whose role is admin. Without ADMIN_TOKEN only admin keys work.
 */
export function createAdminAuth(deps: { adminToken?: string; keys: KeyVerifier }) {
  async function identify(header: string | undefined): Promise<AdminIdentity | undefined> {
    const cred = parseAuthorization(header);
    if (!cred) return undefined;
    const tokenUser = cred.scheme === 'bearer' || cred.user === 'admin';
    if (deps.adminToken && tokenUser && sameSecret(cred.secret, deps.adminToken)) return { via: 'token' };
    const principal = await deps.keys.verify(cred.secret);
    return principal ? { via: 'key', ...principal } : undefined;
  }

  return {
    identify,

    /**
     * An onRequest hook: 401 with a Basic challenge without valid credentials, 403 for a member key, and
     * 403 for a mutation when `readOnly`. It answers itself rather than throwing, so the answer does not
     * depend on which plugin's error handler the route has.
     */
    guard(opts: { readOnly: boolean }) {
      return async (req: FastifyRequest, reply: FastifyReply) => {
        const who = await identify(req.headers.authorization);
        if (!who) {
          return reply
            .code(401)
            .header('www-authenticate', 'Basic realm="agentq admin", charset="UTF-8"')
            .send({ error: 'authentication required: admin token or an admin API key' });
        }
        if (who.via === 'key' && who.role !== 'admin') return reply.code(403).send({ error: 'admin role required' });
        const mutating = !['GET', 'HEAD', 'OPTIONS'].includes(req.method);
        if (mutating && opts.readOnly) return reply.code(403).send({ error: 'read-only mode' });
        req.log = req.log.child({ admin: who.via === 'token' ? 'token' : who.keyId });
      };
    },
  };
}

export type AdminAuth = ReturnType<typeof createAdminAuth>;
