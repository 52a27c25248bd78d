import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { z } from 'zod';
import type { Role } from '../shared/core/roles.js';
import type { Principal } from './auth.js';
import { errors } from './schemas/common.js';

/**
 * Who may call a route (README "Roles"): anyone (`public`), a tenant key of at least this role acting on its
 * own org (`member`: members and org-admins; `org-admin`), or the platform `operator` (an operator key or the
 * ADMIN_TOKEN).
 */
export type RouteRole = 'public' | Role;

/** A route's access rule, as its row declares it and the auth hook (app.ts) enforces it. */
export interface RouteAccess {
  role: RouteRole;
  /** An `org-admin` route the operator may call too, acting on every org at once (the DLQ). */
  operatorSeesEveryOrg?: true;
  /** A page for browsers: basic auth is accepted (and challenged) as on operator routes (the cost dashboard). */
  browser?: true;
}

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Set on every route: registering one without it fails at start-up (app.ts). */
    access?: RouteAccess;
    /** Log this route's requests at debug (see request-log.ts). */
    quiet?: boolean;
  }
}

/** A route's request and response schemas, in zod: the type provider validates them, swagger documents them. */
export interface RouteSchema {
  params?: z.ZodType;
  querystring?: z.ZodType;
  body?: z.ZodType;
  headers?: z.ZodType;
  /** A zod schema (JSON), or `{ description, content }` for other media types (SSE, Prometheus text). */
  response?: Record<number, z.ZodType | MediaResponse>;
}

export interface MediaResponse {
  description: string;
  content: Record<string, { schema: z.ZodType }>;
}

type Out<T> = T extends z.ZodType ? z.output<T> : unknown;

/** The request a handler sees once its schema has validated (and coerced) params, query, body and headers. */
export type RequestOf<S extends Omit<RouteSchema, 'response'>> = FastifyRequest<{
  Params: Out<S['params']>;
  Querystring: Out<S['querystring']>;
  Body: Out<S['body']>;
  Headers: Out<S['headers']>;
}>;

export type Handler<S extends Omit<RouteSchema, 'response'>> = (req: RequestOf<S>, reply: FastifyReply) => Promise<unknown>;

/** One row of the route table: a handler factory, bound to its area's dependencies when registered. */
export interface RouteSpec<D> extends RouteAccess {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  url: string;
  tags: string[];
  summary: string;
  description?: string;
  schema: RouteSchema;
  handler: (deps: D) => Handler<any>;
  /** Probes and scrapes log their requests at debug: they arrive every few seconds and would flood the logs. */
  quiet?: boolean;
}

/** A typed row: the handler must accept the request its own schema produces. */
export function route<D, S extends RouteSchema>(
  spec: Omit<RouteSpec<D>, 'schema' | 'handler'> & { schema: S; handler: (deps: D) => Handler<NoInfer<S>> },
): RouteSpec<D> {
  return spec as RouteSpec<D>;
}

/** The roles a route admits; a public route admits anyone, with or without credentials. */
export function allowedRoles(access: RouteAccess): Role[] {
  switch (access.role) {
    case 'public':
      return ['member', 'org-admin', 'operator'];
    case 'operator':
      return ['operator'];
    case 'member':
      return ['member', 'org-admin'];
    case 'org-admin':
      return access.operatorSeesEveryOrg ? ['org-admin', 'operator'] : ['org-admin'];
  }
}

/** The auth hook's decision: who may pass, 401 without credentials, 403 for a role the route does not admit. */
export function admits(access: RouteAccess, who: Principal | undefined): 'ok' | 401 | 403 {
  if (access.role === 'public') return 'ok';
  if (!who) return 401;
  return allowedRoles(access).includes(who.role) ? 'ok' : 403;
}

const ROLE_TEXT: Record<RouteRole, string> = {
  public: 'Public: no credentials.',
  member: 'Role: **member** (or org-admin) of the org; another org’s resources answer 404.',
  'org-admin': 'Role: **org-admin** of the org; another org’s resources answer 404.',
  operator: 'Role: **operator** (an operator key or the ADMIN_TOKEN).',
};

/**
 * OpenAPI metadata of a route, from its row (and for routes that are not in the table, such as Bull Board's):
 * `x-required-role` and `x-allowed-roles`, the role in the description, and the credentials it takes.
 */
export function documentation(spec: Pick<RouteSpec<unknown>, 'role' | 'operatorSeesEveryOrg' | 'tags' | 'summary' | 'description'>) {
  const roleText = `${ROLE_TEXT[spec.role]}${spec.operatorSeesEveryOrg ? ' The **operator** may call it too and sees every org’s entries.' : ''}`;
  const security: Array<Record<string, string[]>> = spec.role === 'public' ? [] : spec.role === 'operator' ? [{ bearer: [] }, { basic: [] }] : [{ bearer: [] }];
  return {
    tags: spec.tags,
    summary: spec.summary,
    description: spec.description ? `${roleText}\n\n${spec.description}` : roleText,
    security,
    'x-required-role': spec.role,
    ...(spec.role === 'public' ? {} : { 'x-allowed-roles': allowedRoles(spec) }),
  };
}

/** 401 and 403 answer every route that needs credentials: documented here, once, from the role. */
function withAuthErrors(spec: RouteSpec<unknown>): RouteSchema {
  if (spec.role === 'public') return spec.schema;
  return { ...spec.schema, response: { ...errors(401, 403), ...spec.schema.response } };
}

/** Registers rows on `app`, each handler built once from `deps`; the auth hook in app.ts reads `config.access`. */
export function registerRoutes<D>(app: FastifyInstance, specs: RouteSpec<D>[], deps: D): void {
  for (const spec of specs) {
    app.route({
      method: spec.method,
      url: spec.url,
      config: {
        access: { role: spec.role, ...(spec.operatorSeesEveryOrg ? { operatorSeesEveryOrg: true } : {}), ...(spec.browser ? { browser: true } : {}) },
        ...(spec.quiet ? { quiet: true } : {}),
      },
      schema: { ...withAuthErrors(spec as RouteSpec<unknown>), ...documentation(spec) },
      handler: spec.handler(deps) as never,
    });
  }
}
