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
  'ADMIN_TOKEN',
];

/** Never reads the environment: the level comes from the caller (the parsed config for the root logger). */
export function createLogger(opts: { level?: string; destination?: pino.DestinationStream } = {}): Logger {
  return pino(
    {
      level: opts.level ?? 'info',
      base: { service: 'agentq', pid: process.pid },
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    opts.destination,
  );
}

/**
 * The root logger; everything else uses `.child()` of it with job or request context. Built from the
 * validated config, so a bad LOG_LEVEL is the config's one-line error naming the variable, not a pino throw.
 */
export const createRootLogger = (cfg: Pick<Config, 'LOG_LEVEL'>): Logger => createLogger({ level: cfg.LOG_LEVEL });

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
