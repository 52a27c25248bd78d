import { context, isSpanContextValid, trace } from '@opentelemetry/api';
import { pino, type Logger } from 'pino';
import type { Config } from './config.js';

export type { Logger };

/** Paths that can carry credentials or prompt content; pino replaces them before a line is written. */
export const REDACT_PATHS = [
  'req.headers.authorization',
  'req.headers.cookie',
  'headers.authorization',
  'authorization',
  'apiKey',
  'key',
  'token',
  'password',
  '*.apiKey',
  '*.token',
  '*.password',
  '*.authorization',
  'GEMINI_API_KEY',
  'GOOGLE_API_KEY',
  'ADMIN_TOKEN',
];

export type LogFormat = 'json' | 'pretty';

/**
 * JSON for machines (a pipe, a file, a container's log driver, production), pretty lines for a person at a
 * terminal in development; LOG_FORMAT=json|pretty overrides.
 */
export function logFormat(cfg: Pick<Config, 'LOG_FORMAT' | 'NODE_ENV'>, stdoutIsTTY: boolean): LogFormat {
  if (cfg.LOG_FORMAT !== 'auto') return cfg.LOG_FORMAT;
  return stdoutIsTTY && cfg.NODE_ENV === 'development' ? 'pretty' : 'json';
}

/** pino-pretty in a worker thread (a pino transport), so formatting never runs on the event loop. */
function prettyTransport(): pino.DestinationStream {
  return pino.transport({
    target: 'pino-pretty',
    options: { destination: 1, colorize: Boolean(process.stdout.isTTY), translateTime: 'SYS:HH:MM:ss.l', ignore: 'service,hostname' },
  }) as pino.DestinationStream;
}

/** What `traceFields` answers outside a span: never written to, so one object serves every line. */
const NO_TRACE: Record<string, string> = Object.freeze({}) as Record<string, string>;

/**
 * The active span's ids under OpenTelemetry's log-correlation names (`trace_id`, `span_id`, `trace_flags`), so an
 * operator goes from a line to its trace: a worker's line inside its attempt's span, an API line inside its
 * request's span. Read when a line is written (a pino mixin), from the API's active context: with no SDK started
 * that is the no-op context manager's root context, so an untraced process pays one lookup per line written and
 * gets no fields.
 */
export function traceFields(): Record<string, string> {
  const sc = trace.getSpanContext(context.active());
  if (!sc || !isSpanContextValid(sc)) return NO_TRACE;
  return { trace_id: sc.traceId, span_id: sc.spanId, trace_flags: `0${sc.traceFlags.toString(16)}`.slice(-2) };
}

/** The line's own fields win over the trace's; a line outside a span is written as given, not copied. */
const mergeTrace = (line: object, fields: object): object => (fields === NO_TRACE ? line : Object.assign(fields, line));

/** Never reads the environment: the level comes from the caller (the parsed config for the root logger). */
export function createLogger(opts: { level?: string; destination?: pino.DestinationStream; format?: LogFormat } = {}): Logger {
  return pino(
    {
      level: opts.level ?? 'info',
      base: { service: 'agentq', pid: process.pid },
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      timestamp: pino.stdTimeFunctions.isoTime,
      // Children inherit both: every logger agentq builds (request, job, feature) correlates its lines.
      mixin: traceFields,
      mixinMergeStrategy: mergeTrace,
    },
    opts.destination ?? (opts.format === 'pretty' ? prettyTransport() : undefined),
  );
}

/**
 * The root logger; everything else uses `.child()` of it with job or request context. Built from the
 * validated config, so a bad LOG_LEVEL is the config's one-line error naming the variable, not a pino throw.
 */
export const createRootLogger = (cfg: Pick<Config, 'LOG_LEVEL' | 'LOG_FORMAT' | 'NODE_ENV'>): Logger =>
  createLogger({ level: cfg.LOG_LEVEL, format: logFormat(cfg, Boolean(process.stdout.isTTY)) });

const LEVELS = new Set(['fatal', 'error', 'warn', 'info', 'debug', 'trace']);
const noop = () => {};

/**
 * `parent.child(bindings)`, built only when a line at an enabled level is written. A child costs its bindings'
 * serialisation (and redaction) up front; per job that was paid on every attempt for debug lines that are
 * off in production. Calls at a disabled level are no-ops without building it.
 */
export function lazyChild(parent: Logger, bindings: Record<string, unknown>): Logger {
  let child: Logger | undefined;
  return new Proxy(parent, {
    get(target, prop) {
      if (!child && typeof prop === 'string' && LEVELS.has(prop) && !target.isLevelEnabled(prop)) return noop;
      child ??= target.child(bindings);
      const v = Reflect.get(child, prop, child) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(child) : v;
    },
  });
}
