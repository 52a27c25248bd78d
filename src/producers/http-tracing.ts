import type { FastifyInstance, FastifyRequest, RouteHandlerMethod } from 'fastify';
import { context, propagation, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Context, type Span } from '@opentelemetry/api';
import { tracer } from '../shared/telemetry/tracing.js';

/**
 * One SERVER span per HTTP request, continuing the caller's W3C `traceparent`. Registered only while
 * tracing is on (the composition root decides), so an untraced API pays nothing per request.
 *
 * Fastify parses bodies on stream events, which run outside any context set in `onRequest`; the span's
 * context is therefore re-entered around each route handler (as @fastify/otel does), which is where the
 * enqueue happens.
 */
export function registerHttpTracing(app: FastifyInstance): void {
  const spans = new WeakMap<FastifyRequest, { span: Span; ctx: Context }>();

  app.addHook('onRoute', (route) => {
    const handler = route.handler as RouteHandlerMethod;
    route.handler = function traced(this: unknown, req, reply) {
      const entry = spans.get(req);
      return entry ? context.with(entry.ctx, () => handler.call(this as never, req, reply)) : handler.call(this as never, req, reply);
    } as RouteHandlerMethod;
  });

  app.addHook('onRequest', (req, _reply, done) => {
    const parent = propagation.extract(ROOT_CONTEXT, req.headers);
    const route = req.routeOptions.url;
    const span = tracer().startSpan(route ? `${req.method} ${route}` : req.method, {
      kind: SpanKind.SERVER,
      attributes: {
        'http.request.method': req.method,
        'url.path': req.url.split('?')[0],
        'url.scheme': req.protocol,
        ...(route ? { 'http.route': route } : {}),
        'agentq.request_id': req.id,
      },
    }, parent);
    const ctx = trace.setSpan(parent, span);
    spans.set(req, { span, ctx });
    context.with(ctx, done);
  });

  const end = (req: FastifyRequest, status?: number) => {
    const entry = spans.get(req);
    if (!entry) return;
    spans.delete(req);
    const { span } = entry;
    if (status !== undefined) span.setAttribute('http.response.status_code', status);
    if (req.principal?.orgId) span.setAttribute('agentq.org_id', req.principal.orgId);
    if (status === undefined || status >= 500) span.setStatus({ code: SpanStatusCode.ERROR, ...(status ? {} : { message: 'request aborted' }) });
    if (status && status >= 500) span.setAttribute('error.type', String(status));
    span.end();
  };
  app.addHook('onResponse', (req, reply, done) => {
    end(req, reply.statusCode);
    done();
  });
  app.addHook('onRequestAbort', (req, done) => {
    end(req);
    done();
  });
}
