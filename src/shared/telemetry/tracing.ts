import { context, propagation, SpanKind, SpanStatusCode, trace, type Attributes, type Context, type Span, type SpanOptions } from '@opentelemetry/api';
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

/** The active context with `span` as its current span (a parent handed over explicitly), or undefined. */
export const withParent = (span: Span | undefined): Context | undefined => (span ? trace.setSpan(context.active(), span) : undefined);

/** Runs `fn` in context `ctx`. */
export const withContext = <T>(ctx: Context, fn: () => T): T => context.with(ctx, fn);

/**
 * Runs `fn` inside a new active span that ends when it settles; a throw marks the span as an error with
 * `error.type` (the stable code when the error has one). The message is kept: agentq's error messages
 * name codes, models and limits, never prompt text.
 */
export async function inSpan<T>(name: string, { parent, ...opts }: SpanOptions & { parent?: Context }, fn: (span: Span) => Promise<T>): Promise<T> {
  return tracer().startActiveSpan(name, opts, parent ?? context.active(), async (span) => {
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

export function markError(span: Span, err: unknown): void {
  const e = err as { code?: unknown; name?: string; message?: string } | undefined;
  span.setAttribute('error.type', typeof e?.code === 'string' ? e.code : (e?.name ?? 'Error'));
  span.setStatus({ code: SpanStatusCode.ERROR, message: e?.message ?? String(err) });
}

/** A guard's decision, as an event on the job attempt's span (no-op when it is not recording). */
export function guardEvent(span: Span | undefined, name: string, attrs: Attributes): void {
  if (span?.isRecording()) span.addEvent(name, attrs);
}
