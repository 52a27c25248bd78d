import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { z } from 'zod';

/** Who may call a route: anyone, a bearer API key (`/v1`), or an operator (admin token or admin key). */
export type RouteAuth = 'public' | 'apiKey' | 'admin';

declare module 'fastify' {
  interface FastifyContextConfig {
    auth?: RouteAuth;
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
export interface RouteSpec<D> {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  url: string;
  auth: RouteAuth;
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

const SECURITY: Record<RouteAuth, Array<Record<string, string[]>>> = {
  public: [],
  apiKey: [{ bearer: [] }],
  admin: [{ bearer: [] }, { basic: [] }],
};

/** OpenAPI metadata of a route, from its row (and for routes that are not in the table, such as Bull Board's). */
export function documentation(spec: Pick<RouteSpec<unknown>, 'auth' | 'tags' | 'summary' | 'description'>) {
  return {
    tags: spec.tags,
    summary: spec.summary,
    ...(spec.description ? { description: spec.description } : {}),
    security: SECURITY[spec.auth],
  };
}

/** Registers rows on `app`, each handler built once from `deps`; the auth hook in app.ts reads `config.auth`. */
export function registerRoutes<D>(app: FastifyInstance, specs: RouteSpec<D>[], deps: D): void {
  for (const spec of specs) {
    app.route({
      method: spec.method,
      url: spec.url,
      config: { auth: spec.auth, ...(spec.quiet ? { quiet: true } : {}) },
      schema: { ...spec.schema, ...documentation(spec) },
      handler: spec.handler(deps) as never,
    });
  }
}
