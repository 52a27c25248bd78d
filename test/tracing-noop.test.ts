import { context, propagation, trace, ProxyTracerProvider } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { extractTrace, injectTrace, inSpan, startActiveSpan } from '../src/shared/telemetry/tracing.js';

const TRACEPARENT = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';

// The OpenTelemetry API is process-global and files share a worker's module graph: each test starts from the
// no-op API (no SDK, no propagator, no context manager) and leaves it so.
const reset = () => {
  trace.disable();
  context.disable();
  propagation.disable();
};

describe('tracing while no SDK is registered', () => {
  beforeEach(reset);
  afterEach(() => {
    vi.restoreAllMocks();
    reset();
  });

  it('runs a span\'s function straight away with a non-recording span, without asking the API for a tracer', async () => {
    const provider = trace.getTracerProvider();
    expect(provider).toBeInstanceOf(ProxyTracerProvider);
    const getTracer = vi.spyOn(provider, 'getTracer');
    const seen = await inSpan('outer', { attributes: { a: 1 } }, async (span) => {
      const inner = startActiveSpan('inner', {}, context.active(), (s) => s);
      return { recording: span.isRecording(), innerRecording: inner.isRecording(), injected: injectTrace() };
    });
    expect(seen).toEqual({ recording: false, innerRecording: false, injected: undefined });
    expect(getTracer).not.toHaveBeenCalled();
  });

  it('still passes an incoming trace on where a propagator and a context manager are registered without an SDK', async () => {
    context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
    propagation.setGlobalPropagator(new W3CTraceContextPropagator());
    const parent = extractTrace({ traceparent: TRACEPARENT });
    const carried = await inSpan('process', { parent }, async () => injectTrace());
    expect(carried?.traceparent.split('-')[1]).toBe(TRACEPARENT.split('-')[1]);
  });

  it('records spans once an SDK registers, and a rejection marks its span as an error', async () => {
    const exporter = new InMemorySpanExporter();
    const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
    trace.setGlobalTracerProvider(provider);
    const outcome = await inSpan('failing', {}, async (span) => {
      expect(span.isRecording()).toBe(true);
      throw Object.assign(new Error('boom'), { code: 'SOME_CODE' });
    }).catch((err: Error) => err.message);
    expect(outcome).toBe('boom');
    const [span] = exporter.getFinishedSpans();
    expect(span?.name).toBe('failing');
    expect(span?.attributes['error.type']).toBe('SOME_CODE');
    await provider.shutdown();
  });
});
