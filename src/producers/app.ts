import { randomUUID } from 'node:crypto';
import Fastify, { LogController, type FastifyInstance } from 'fastify';
import { ConflictError, RateLimitedError, ValidationError, NotFoundError } from '../shared/core/errors.js';
import type { Logger } from '../shared/core/logger.js';
import { bearerToken, type KeyVerifier, type Principal } from './auth.js';
import { HttpError, isRedisUnavailable } from './http-errors.js';
import { agentRoutes, type AgentCatalog } from './routes/agents.js';
import { healthRoutes } from './routes/health.js';
import { jobRoutes, type JobRouteDeps } from './routes/jobs.js';

declare module 'fastify' {
  interface FastifyRequest {
    principal?: Principal;
  }
}

export interface AppDeps extends JobRouteDeps {
  logger: Logger;
  bodyLimit: number;
  keys: KeyVerifier;
  agents: AgentCatalog;
  readiness: Record<string, () => Promise<unknown>>;
  /** Extra route plugins (flows, streams, DLQ, admin...) registered after the core routes. */
  plugins?: Array<(app: FastifyInstance) => Promise<void> | void>;
}

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** Builds the HTTP API from injected dependencies; `server.ts` only listens. */
export async function buildApp(deps: AppDeps): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: deps.logger,
    bodyLimit: deps.bodyLimit,
    // Request log lines carry `requestId`, the same field the worker's job logs use.
    logController: new LogController({ requestIdLogLabel: 'requestId' }),
    // An incoming x-request-id is kept (so callers can trace a job end to end) only if it is a sane token.
    genReqId: (req) => {
      const header = req.headers['x-request-id'];
      return typeof header === 'string' && REQUEST_ID.test(header) ? header : randomUUID();
    },
  });

  app.addHook('onRequest', async (req, reply) => {
    reply.header('x-request-id', req.id);
  });

  app.decorateRequest('principal', undefined);

  // Strict JSON: invalid UTF-8 is refused rather than silently turned into U+FFFD and stored.
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (_req, body: Buffer, done) => {
    let text: string;
    try {
      text = utf8.decode(body);
    } catch {
      return done(new HttpError(400, 'request body is not valid UTF-8'));
    }
    if (text.trim() === '') return done(null, undefined);
    try {
      done(null, JSON.parse(text));
    } catch (err) {
      done(new HttpError(400, `request body is not valid JSON: ${(err as Error).message}`));
    }
  });

  /** Authenticates `/v1/*`; every handler below reads the org from `req.principal`, never from the body. */
  app.addHook('preHandler', async (req) => {
    if (!req.url.startsWith('/v1/')) return;
    const token = bearerToken(req.headers.authorization);
    if (!token) throw new HttpError(401, 'missing bearer token', {}, { 'www-authenticate': 'Bearer' });
    const principal = await deps.keys.verify(token);
    if (!principal) throw new HttpError(401, 'invalid or revoked API key', {}, { 'www-authenticate': 'Bearer' });
    req.principal = principal;
    req.log = req.log.child({ orgId: principal.orgId });
  });

  app.setErrorHandler(async (err: any, req, reply) => {
    if (err instanceof HttpError) {
      return reply.code(err.statusCode).headers(err.headers).send({ error: err.message, ...err.extra });
    }
    if (err instanceof ValidationError) return reply.code(400).send({ error: err.message, details: err.details });
    if (err instanceof NotFoundError) return reply.code(404).send({ error: err.message });
    if (err instanceof ConflictError) return reply.code(409).send({ error: err.message });
    if (err instanceof RateLimitedError) {
      return reply.code(429).header('retry-after', String(err.retryAfterS)).send({ error: err.message, retryAfter: err.retryAfterS });
    }
    if (typeof err?.statusCode === 'number' && err.statusCode >= 400 && err.statusCode < 500) {
      const details = err.validation?.map((v: any) => ({ path: v.instancePath.replace(/^\//, '').replaceAll('/', '.') || v.params?.missingProperty || '(root)', message: v.message }));
      const message = err.code === 'FST_ERR_CTP_BODY_TOO_LARGE' ? `request body larger than ${deps.bodyLimit} bytes` : err.message;
      return reply.code(err.statusCode).send({ error: message, ...(details ? { details } : {}) });
    }
    if (isRedisUnavailable(err)) {
      req.log.warn({ err: err.message }, 'redis unavailable');
      return reply.code(503).header('retry-after', '1').send({ error: 'queue unavailable, retry shortly' });
    }
    req.log.error({ err }, 'unhandled error');
    return reply.code(500).send({ error: 'internal error' });
  });

  app.setNotFoundHandler(async (req, reply) => reply.code(404).send({ error: `no route ${req.method} ${req.url.split('?')[0]}` }));

  await app.register(async (scope) => healthRoutes(scope, deps.readiness));
  await app.register(async (scope) => agentRoutes(scope, deps.agents));
  await app.register(async (scope) => jobRoutes(scope, deps));
  for (const plugin of deps.plugins ?? []) await app.register(async (scope) => plugin(scope));
  return app as unknown as FastifyInstance;
}

/** The authenticated principal of a `/v1/*` request (set by the preHandler above). */
