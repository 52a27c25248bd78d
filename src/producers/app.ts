import { randomUUID } from 'node:crypto';
import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { RequestLog } from './request-log.js';
import { hasZodFastifySchemaValidationErrors, serializerCompiler, validatorCompiler } from 'fastify-type-provider-zod';
import { ConflictError, RateLimitedError, ValidationError, NotFoundError } from '../shared/core/errors.js';
import type { Logger } from '../shared/core/logger.js';
import { agentRoutes, healthRoutes, jobRoutes } from './area-routes.js';
import { bearerToken, type KeyVerifier, type Principal } from './auth.js';
import { frameworkMessage } from './framework-errors.js';
import { HttpError, isRedisUnavailable } from './http-errors.js';
import { registerDocsPage, registerOpenApi } from './openapi.js';
import { registerRoutes, type RouteAuth } from './route-spec.js';
import { routeTable } from './route-table.js';
import type { AgentCatalog } from './routes/agents.js';
import type { JobRouteDeps } from './routes/jobs.js';
import { validationError } from './validation-details.js';

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

/** Who may call what a request reached: its route's row, else (unknown URLs) a key for anything under /v1. */
function authOf(req: FastifyRequest): RouteAuth {
  return req.routeOptions.config.auth ?? (req.url.startsWith('/v1/') ? 'apiKey' : 'public');
}

/** Builds the HTTP API from injected dependencies; `server.ts` only listens. */
export async function buildApp(deps: AppDeps): Promise<FastifyInstance> {
  // The pino logger's type is richer than fastify's base logger: the app is used as a plain FastifyInstance.
  const app = Fastify({
    loggerInstance: deps.logger,
    bodyLimit: deps.bodyLimit,
    // Request log lines carry `requestId`, the same field the worker's job logs use.
    logController: new RequestLog({ requestIdLogLabel: 'requestId' }),
    // An incoming x-request-id is kept (so callers can trace a job end to end) only if it is a sane token.
    genReqId: (req) => {
      const header = req.headers['x-request-id'];
      return typeof header === 'string' && REQUEST_ID.test(header) ? header : randomUUID();
    },
    // Errors found before routing (a badly encoded URL, an over-long parameter) answer in the same shape.
    frameworkErrors: (err, req, reply) => {
      reply.header('x-request-id', req.id);
      return (reply as FastifyReply).code(err.statusCode ?? 400).send({ error: frameworkMessage(err, deps.bodyLimit) });
    },
  }) as unknown as FastifyInstance;

  // Every route's params, query, body and headers are validated here, by its zod schema (the route table).
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);

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
      // V8's message can quote the body (`Unexpected token 'a', "aq_live_…" is not valid JSON`): only the position is kept.
      const at = /position (\d+)/.exec((err as Error).message)?.[1];
      done(new HttpError(400, `request body is not valid JSON${at ? ` (at position ${at})` : ''}`));
    }
  });

  /**
   * Authenticates API-key routes after the body is parsed and before it is validated (so a caller without
   * a key learns nothing about the schema); handlers read the org from `req.principal`, never the body.
   * Admin routes are guarded by their own scope's hook (area-routes.ts: adminRoutes).
   */
  app.addHook('preValidation', async (req) => {
    if (authOf(req) !== 'apiKey') return;
    const token = bearerToken(req.headers.authorization);
    if (!token) throw new HttpError(401, 'missing bearer token', {}, { 'www-authenticate': 'Bearer' });
    const principal = await deps.keys.verify(token);
    if (!principal) throw new HttpError(401, 'invalid or revoked API key', {}, { 'www-authenticate': 'Bearer' });
    req.principal = principal;
    req.log = req.log.child({ orgId: principal.orgId });
  });

  app.setErrorHandler(async (err: FastifyError, req: FastifyRequest, reply: FastifyReply) => {
    if (err instanceof HttpError) {
      return reply.code(err.statusCode).headers(err.headers).send({ error: err.message, ...err.extra });
    }
    if (hasZodFastifySchemaValidationErrors(err)) return reply.code(400).send(validationError(err.validation, err.validationContext));
    if (err instanceof ValidationError) return reply.code(400).send({ error: err.message, details: err.details });
    if (err instanceof NotFoundError) return reply.code(404).send({ error: err.message });
    if (err instanceof ConflictError) return reply.code(409).send({ error: err.message, ...err.extra });
    if (err instanceof RateLimitedError) {
      return reply.code(429).header('retry-after', String(err.retryAfterS)).send({ error: err.message, retryAfter: err.retryAfterS });
    }
    if (typeof err?.statusCode === 'number' && err.statusCode >= 400 && err.statusCode < 500) {
      // Fastify's own (FST_ERR_*) in fixed words; a plugin's 4xx (Bull Board, static files) keeps its message.
      const message = err.code?.startsWith('FST_') ? frameworkMessage(err, deps.bodyLimit) : err.message;
      return reply.code(err.statusCode).send({ error: message });
    }
    if (isRedisUnavailable(err)) {
      req.log.warn({ err: err.message }, 'redis unavailable');
      return reply.code(503).header('retry-after', '1').send({ error: 'queue unavailable, retry shortly' });
    }
    req.log.error({ err }, 'unhandled error');
    return reply.code(500).send({ error: 'internal error' });
  });

  // The URL is not echoed: it is the caller's text, and logs already have it.
  app.setNotFoundHandler(async (req, reply) => reply.code(404).send({ error: `no route for ${req.method} at this URL; see /openapi.json` }));

  await registerOpenApi(app);
  await app.register(async (scope) => healthRoutes(scope, deps.readiness));
  await app.register(async (scope) => agentRoutes(scope, deps.agents));
  await app.register(async (scope) => jobRoutes(scope, deps));
  for (const plugin of deps.plugins ?? []) await app.register(async (scope) => plugin(scope));
  await app.register(async (scope) => registerRoutes(scope, routeTable.docs, { document: () => app.swagger() }));
  await registerDocsPage(app);
  return app;
}
