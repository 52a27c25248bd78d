import { randomUUID } from 'node:crypto';
import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { symbols as pinoSymbols } from 'pino';
import { RequestLog } from './request-log.js';
import { hasZodFastifySchemaValidationErrors, serializerCompiler, validatorCompiler } from 'fastify-type-provider-zod';
import { ConflictError, EDBUNAVAILABLE, RateLimitedError, ValidationError, NotFoundError } from '../shared/core/errors.js';
import { codeOf } from '../shared/core/outcomes.js';
import type { Logger } from '../shared/core/logger.js';
import { agentRoutes, healthRoutes, jobRoutes } from './area-routes.js';
import type { KeyVerifier, Principal } from './auth.js';
import { createCredentials } from './credentials.js';
import { frameworkMessage } from './framework-errors.js';
import { conflictBody, HttpError, isRedisUnavailable } from './http-errors.js';
import { registerDocsPage, registerOpenApi } from './openapi.js';
import { admits, allowedRoles, registerRoutes, type RouteAccess } from './route-spec.js';
import { routeTable } from './route-table.js';
import type { AgentCatalog } from './routes/agents.js';
import type { JobRouteDeps } from './routes/jobs.js';
import { validationError } from './validation-details.js';
import { firstBodyFault, mayHoldHugeNumber, mayHoldLoneSurrogate } from './body-faults.js';
import { registerHttpTracing } from './http-tracing.js';

declare module 'fastify' {
  interface FastifyRequest {
    principal?: Principal;
  }
}

export interface AppDeps extends JobRouteDeps {
  logger: Logger;
  bodyLimit: number;
  keys: KeyVerifier;
  /** The operator's shared secret (ADMIN_TOKEN); unset, only operator keys are operators. */
  adminToken?: string;
  agents: AgentCatalog;
  readiness: Record<string, () => Promise<unknown>>;
  /** A SERVER span per request (continuing the caller's traceparent); only while tracing is on. */
  tracing?: boolean;
  /** Extra route plugins (flows, streams, DLQ, admin...) registered after the core routes. */
  plugins?: Array<(app: FastifyInstance) => Promise<void> | void>;
}

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/**
 * Who may call what a request reached: its route's row. An unknown URL under /v1 needs some valid
 * credential before it learns that it is unknown (so the route list cannot be probed without a key).
 */
function accessOf(req: FastifyRequest): RouteAccess | 'any-credential' {
  return req.routeOptions.config?.access ?? (req.url.startsWith('/v1/') ? 'any-credential' : { role: 'public' });
}

const serializersOf = (l: Logger) => (l as unknown as Record<symbol, unknown>)[pinoSymbols.serializersSym];

/** Framework routes that are public by nature: the docs page's own (its plugin registers them). */
const DOCS_PAGE = /^\/docs(\/|$)/;

/** Builds the HTTP API from injected dependencies; `server.ts` only listens. */
export async function buildApp(deps: AppDeps): Promise<FastifyInstance> {
  // Request log lines carry `requestId`, the same field the worker's job logs use. Traced, `incoming request`
  // waits for the request's span (see the onRequest hook below), so it carries the span's ids as every other line.
  const requestLog = new RequestLog({ requestIdLogLabel: 'requestId', deferIncoming: deps.tracing === true });
  // The pino logger's type is richer than fastify's base logger: the app is used as a plain FastifyInstance.
  const app = Fastify({
    loggerInstance: deps.logger,
    bodyLimit: deps.bodyLimit,
    logController: requestLog,
    // An incoming x-request-id is kept (so callers can trace a job end to end) only if it is a sane token.
    genReqId: (req) => {
      const header = req.headers['x-request-id'];
      return typeof header === 'string' && REQUEST_ID.test(header) ? header : randomUUID();
    },
    // Errors found before routing (a badly encoded URL, an over-long parameter) answer in the same shape.
    frameworkErrors: (err, req, reply) => {
      // Answered without hooks, so without a span: its held-back `incoming request` line is written here.
      requestLog.writeIncoming(req as FastifyRequest, reply as FastifyReply);
      reply.header('x-request-id', req.id);
      return (reply as FastifyReply).code(err.statusCode ?? 400).send({ error: frameworkMessage(err, deps.bodyLimit) });
    },
  }) as unknown as FastifyInstance;

  // Every route's params, query, body and headers are validated here, by its zod schema (the route table).
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);

  if (deps.tracing) {
    registerHttpTracing(app);
    // Registered right after the tracing hook, which runs the hooks after it inside the request's span.
    app.addHook('onRequest', (req, reply, done) => {
      requestLog.writeIncoming(req, reply);
      done();
    });
  }

  app.addHook('onRequest', async (req, reply) => {
    reply.header('x-request-id', req.id);
  });

  app.decorateRequest('principal', undefined);

  // Bodies are JSON only: fastify's built-in text/plain parser would hand a route a string, which its schema then
  // refuses as "expected object"; without it such a body is the 415 the routes document.
  app.removeContentTypeParser('text/plain');
  // Strict JSON: invalid UTF-8 and a lone surrogate escape are refused rather than silently turned into U+FFFD and
  // stored, a number beyond a double's range rather than stored as null, and nesting no later step could serialise
  // again is refused too (body-faults.ts).
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (_req, body: Buffer, done) => {
    let text: string;
    try {
      text = utf8.decode(body);
    } catch {
      return done(new HttpError(400, 'request body is not valid UTF-8'));
    }
    if (text.trim() === '') return done(null, undefined);
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch (err) {
      // V8's message can quote the body (`Unexpected token 'a', "aq_live_…" is not valid JSON`): only the position is kept.
      const at = /position (\d+)/.exec((err as Error).message)?.[1];
      return done(new HttpError(400, `request body is not valid JSON${at ? ` (at position ${at})` : ''}`));
    }
    const fault = firstBodyFault(parsed, { strings: mayHoldLoneSurrogate(text), numbers: mayHoldHugeNumber(text) });
    if (fault) return done(new HttpError(400, 'invalid body', { details: [fault] }));
    done(null, parsed);
  });

  // No route ships without a role: each registered route must carry `config.access` (the route table's rows
  // do by type; Bull Board's get it where it is mounted) or start-up fails, naming it.
  const registered: Array<{ url: string; method: unknown; config?: { access?: RouteAccess } }> = [];
  app.addHook('onRoute', (opts) => {
    if (DOCS_PAGE.test(opts.url)) opts.config = { ...opts.config, access: { role: 'public' } };
    registered.push(opts);
  });
  app.addHook('onReady', async () => {
    const missing = registered.filter((r) => !r.config?.access).map((r) => `${String(r.method)} ${r.url}`);
    if (missing.length) throw new Error(`routes without a role (declare one in the route table): ${missing.join(', ')}`);
  });

  // Requests in flight when the app starts closing (long polls answered by their preClose hooks, SSE cut) are
  // answered on keep-alive connections that fastify's close no longer sees idle: each would hold `app.close()`
  // until its keep-alive timeout (72 s). From now on a connection idle after its response ends at once (Node
  // reads the server's keepAliveTimeout as each response finishes): no hook on every request for it.
  app.addHook('preClose', (done) => {
    app.server.keepAliveTimeout = 1;
    done();
  });

  /**
   * The request's logger bound to its caller: the same lines as `req.log.child(bindings)`, built as one child of the
   * app's logger holding the request's own binding (what fastify's per-request child holds) and `bindings`. pino's
   * child is `Object.create(parent)`: a child of the request's child makes that short-lived object a prototype, which
   * V8 re-shapes at a cost (~5 µs a request, against <1 µs for another child of the long-lived app logger). A route
   * whose child fastify made with its own level or serializers (`logLevel`, `logSerializers`) keeps a child of it.
   */
  const callerLog = (req: FastifyRequest, bindings: Record<string, string>): FastifyRequest['log'] => {
    const parent = app.log as Logger;
    const own = req.log as Logger;
    if (Object.getPrototypeOf(own) !== parent || own.level !== parent.level || serializersOf(own) !== serializersOf(parent)) {
      return req.log.child(bindings);
    }
    return parent.child({ [requestLog.requestIdLogLabel]: req.id, ...bindings });
  };

  const credentials = createCredentials({ adminToken: deps.adminToken, keys: deps.keys });
  /**
   * Authenticates and authorises every route from its row's role, after the body is parsed and before it is
   * validated (so a caller without the role learns nothing about the schema). 401 without valid credentials,
   * 403 for a role the route does not admit. Handlers read the org from `req.principal`, never the body, so a
   * foreign org's ids are simply not found (404). It answers itself rather than throwing, so the answer does
   * not depend on which plugin's error handler the route has (Bull Board's).
   */
  app.addHook('preValidation', async (req, reply) => {
    const access = accessOf(req);
    if (access !== 'any-credential' && access.role === 'public') return;
    const operatorRoute = access !== 'any-credential' && access.role === 'operator';
    // Browsers (Bull Board, the cost dashboard) send basic auth; API clients a bearer token.
    const browser = operatorRoute || (access !== 'any-credential' && access.browser === true);
    const who = await credentials.identify(req.headers.authorization, { basic: browser });
    const verdict = access === 'any-credential' ? (who ? 'ok' : 401) : admits(access, who);
    if (verdict === 401) {
      const challenge = browser ? 'Basic realm="agentq", charset="UTF-8"' : 'Bearer';
      const error = !req.headers.authorization
        ? operatorRoute
          ? 'authentication required: an operator key or the ADMIN_TOKEN'
          : 'missing bearer token'
        : 'invalid or revoked API key';
      return reply.code(401).header('www-authenticate', challenge).send({ error });
    }
    if (verdict === 403) {
      const error = who?.role === 'operator' ? 'an operator has no org: this needs a key of the org' : `this needs the ${allowedRoles(access as RouteAccess).join(' or ')} role`;
      return reply.code(403).send({ error });
    }
    req.principal = who;
    if (who) req.log = callerLog(req, who.role === 'operator' ? { operator: who.keyId ?? 'token' } : { orgId: who.orgId });
  });

  app.setErrorHandler(async (err: FastifyError, req: FastifyRequest, reply: FastifyReply) => {
    if (err instanceof HttpError) {
      return reply.code(err.statusCode).headers(err.headers).send({ error: err.message, ...err.extra });
    }
    if (hasZodFastifySchemaValidationErrors(err)) return reply.code(400).send(validationError(err.validation, err.validationContext));
    if (err instanceof ValidationError) return reply.code(400).send({ error: err.message, details: err.details });
    if (err instanceof NotFoundError) return reply.code(404).send({ error: err.message });
    if (err instanceof ConflictError) return reply.code(409).send(conflictBody(err));
    if (err instanceof RateLimitedError) {
      return reply.code(429).header('retry-after', String(err.retryAfterS)).send({ error: err.message, retryAfter: err.retryAfterS, ...err.extra });
    }
    if (typeof err?.statusCode === 'number' && err.statusCode >= 400 && err.statusCode < 500) {
      // Fastify's own (FST_ERR_*) in fixed words; a plugin's 4xx (Bull Board, static files) keeps its message.
      const message = err.code?.startsWith('FST_') ? frameworkMessage(err, deps.bodyLimit) : err.message;
      return reply.code(err.statusCode).send({ error: message });
    }
    // Before the Redis test, whose patterns (ECONNREFUSED...) a database error's message may hold too.
    if (codeOf(err) === EDBUNAVAILABLE) {
      req.log.warn({ err: err.message }, 'database unavailable');
      return reply.code(503).header('retry-after', '1').send({ error: 'database unavailable, retry shortly' });
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
