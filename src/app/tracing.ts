import { context, propagation, trace } from '@opentelemetry/api';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BatchSpanProcessor, NodeTracerProvider } from '@opentelemetry/sdk-trace-node';
import type { Config } from '../shared/core/config.js';
import type { Logger } from '../shared/core/logger.js';

export interface Tracing {
  /** Exports what is buffered (tests, the bench). */
  flush(): Promise<void>;
  /** Flushes and stops the SDK; the API goes back to its no-op tracer. */
  shutdown(): Promise<void>;
}

/** Where spans go, per the OTLP exporter spec: the traces URL as given, or `/v1/traces` under the base endpoint. */
export function tracesUrl(cfg: Pick<Config, 'OTEL_EXPORTER_OTLP_ENDPOINT' | 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT' | 'OTEL_SDK_DISABLED'>): string | undefined {
  if (cfg.OTEL_SDK_DISABLED) return undefined;
  if (cfg.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) return cfg.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT;
  if (cfg.OTEL_EXPORTER_OTLP_ENDPOINT) return `${cfg.OTEL_EXPORTER_OTLP_ENDPOINT.replace(/\/+$/, '')}/v1/traces`;
  return undefined;
}

export const tracingEnabled = (cfg: Config) => tracesUrl(cfg) !== undefined;

/**
 * Starts the OpenTelemetry SDK for this process when an OTLP endpoint is configured: OTLP/HTTP (JSON)
 * export in batches, W3C trace context propagation, AsyncLocalStorage context. Otherwise nothing is
 * started and every span agentq opens is the API's no-op. Other standard variables (OTEL_EXPORTER_OTLP_HEADERS,
 * _TIMEOUT, OTEL_TRACES_SAMPLER, OTEL_RESOURCE_ATTRIBUTES, OTEL_BSP_*) are read by the SDK itself.
 */
export function startTracing(cfg: Config, logger: Logger, extra: { role?: string } = {}): Tracing | undefined {
  const url = tracesUrl(cfg);
  if (!url) return undefined;
  const provider = new NodeTracerProvider({
    resource: resourceFromAttributes({
      'service.name': cfg.OTEL_SERVICE_NAME,
      ...(extra.role ? { 'agentq.role': extra.role } : {}),
    }),
    spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter({ url }))],
  });
  provider.register();
  // The endpoint may carry credentials in its userinfo or query: only the host is logged.
  logger.info({ otlpHost: new URL(url).host, serviceName: cfg.OTEL_SERVICE_NAME, captureContent: cfg.OTEL_CAPTURE_CONTENT }, 'tracing on: exporting OTLP/HTTP');
  let stopped = false;
  return {
    flush: () => provider.forceFlush(),
    async shutdown() {
      if (stopped) return;
      stopped = true;
      await provider.shutdown().catch((err: unknown) => logger.warn({ err }, 'tracing: final export failed'));
      // Back to the no-op API, so a later start in the same process (tests) registers afresh.
      trace.disable();
      context.disable();
      propagation.disable();
    },
  };
}
