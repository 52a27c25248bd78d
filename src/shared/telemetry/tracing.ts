import {
  context,
  INVALID_SPAN_CONTEXT,
  isSpanContextValid,
  propagation,
  ProxyTracerProvider,
  SpanKind,
  SpanStatusCode,
  trace,
  type Attributes,
  type Context,
  type Span,
  type SpanContext,
  type SpanOptions,
} from '@opentelemetry/api';
import type { TraceCarrier } from '../core/types.js';

/**
 * agentq's tracer, from the global API: a no-op until the composition root registers an SDK (src/app/tracing.ts),
 * so code that traces costs a few property reads per span while tracing is off. Looked up per span, not kept:
 * a kept proxy tracer stays bound to the first SDK it saw, even after that SDK shut down and another started.
 */
export const tracer = () => trace.getTracer('agentq');

export { SpanKind, type Span, type Context };

/** The active trace context as a job-data carrier, or undefined when nothing is traced (no SDK, no span). */
export function injectTrace(ctx: Context = context.active()): TraceCarrier | undefined {
  if (!trace.getSpanContext(ctx)) return undefined;
  const carrier: Partial<TraceCarrier> = {};
  propagation.inject(ctx, carrier);
  return carrier.traceparent ? (carrier as TraceCarrier) : undefined;
}

/** The context a carrier (job data, HTTP headers) describes, on top of the active one. */
export function extractTrace(carrier: TraceCarrier | Record<string, unknown> | undefined): Context {
  const active = context.active();
  return carrier ? propagation.extract(active, carrier) : active;
}

/** Runs `fn` in context `ctx`. */
export const withContext = <T>(ctx: Context, fn: () => T): T => context.with(ctx, fn);

/**
 * Runs `fn` inside a new active span that ends when it settles; a throw marks the span as an error with
 * `error.type` (the stable code when the error has one). The message is kept: agentq's error messages
 * name codes, models and limits, never prompt text. `attributes` given as a function are built only when a
 * span is started (tracing off, a model call's dozen fields were built for nothing on every job). `parentSpan`: a
 * parent handed over as a span (the active context with it set), made a context only when a span is started.
 */
export function inSpan<T>(name: string, opts: InSpanOptions, fn: (span: Span) => Promise<T>): Promise<T> {
  const { parentSpan } = opts;
  if (parentSpan ? untracedSpan(parentSpan) : untraced(opts.parent ?? context.active())) return fn(NO_SPAN);
  const parent = parentSpan ? trace.setSpan(context.active(), parentSpan) : (opts.parent ?? context.active());
  return tracer().startActiveSpan(name, spanOptionsOf(opts), parent, async (span) => {
    try {
      return await fn(span);
    } catch (err) {
      if (span.isRecording()) markError(span, err);
      throw err;
    } finally {
      span.end();
    }
  });
}

/**
 * Starts an active span for `fn` the way `tracer().startActiveSpan` does, but with no SDK and no trace to carry
 * it calls `fn` straight away: the API's no-op tracer would make a proxy tracer, a span and a context only to
 * run `fn` unchanged, which is most of what tracing costs a job while it is off (the bench's tracing case).
 */
export function startActiveSpan<T>(name: string, opts: SpanOptions | (() => SpanOptions), parent: Context, fn: (span: Span) => T): T {
  if (untraced(parent)) return fn(NO_SPAN);
  // Options given as a function are built only for a span that records: a job's attributes are a dozen fields.
  return tracer().startActiveSpan(name, typeof opts === 'function' ? opts() : opts, parent, fn);
}

/** The span handed to traced code when nothing is traced: non-recording and invalid, as the no-op tracer's own. */
const NO_SPAN: Span = trace.wrapSpanContext(INVALID_SPAN_CONTEXT);

/**
 * True when a span started now would be a no-op that carries nothing: no SDK has registered a tracer provider
 * (the global proxy has no delegate) and the parent holds no valid span context a no-op span would pass on to
 * the code it runs (possible only where a propagator or context manager is registered without an SDK).
 */
function untraced(parent: Context): boolean {
  return noTracer() && noValidSpan(trace.getSpanContext(parent));
}

/** `untraced` of the active context with `span` set on it, without making that context. */
const untracedSpan = (span: Span): boolean => noTracer() && noValidSpan(span.spanContext());

function noTracer(): boolean {
  const provider = trace.getTracerProvider();
  return provider instanceof ProxyTracerProvider && provider.getDelegateTracer('agentq') === undefined;
}

const noValidSpan = (parent: SpanContext | undefined): boolean => parent === undefined || !isSpanContextValid(parent);

export type InSpanOptions = Omit<SpanOptions, 'attributes'> & { parent?: Context; parentSpan?: Span; attributes?: Attributes | (() => Attributes) };

function spanOptionsOf({ parent: _parent, parentSpan: _parentSpan, attributes, ...opts }: InSpanOptions): SpanOptions {
  return attributes === undefined ? opts : { ...opts, attributes: typeof attributes === 'function' ? attributes() : attributes };
}

export function markError(span: Span, err: unknown): void {
  const e = err as { code?: unknown; name?: string; message?: string } | undefined;
  span.setAttribute('error.type', typeof e?.code === 'string' ? e.code : (e?.name ?? 'Error'));
  span.setStatus({ code: SpanStatusCode.ERROR, message: e?.message ?? String(err) });
}

/** A guard's decision, as an event on the job attempt's span (no-op when it is not recording). */
export function guardEvent(span: Span | undefined, name: string, attrs: Attributes): void {
  if (span?.isRecording()) span.addEvent(name, attrs);
}
