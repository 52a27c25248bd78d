import { pino, type Logger } from 'pino';

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

export function createLogger(opts: { level?: string; destination?: pino.DestinationStream } = {}): Logger {
  return pino(
    {
      level: opts.level ?? process.env.LOG_LEVEL ?? 'info',
      base: { service: 'agentq', pid: process.pid },
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    opts.destination,
  );
}

/** The root logger; everything else uses `.child()` of it with job or request context. */
export const rootLogger: Logger = createLogger();
