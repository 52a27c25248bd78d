import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { assertGeminiConfigured, ConfigError, parseConfig, type Config } from './shared/core/config.js';
import { createApiKeyStore } from './shared/infra/db/api-keys.js';
import { openInfra, type Infra } from './shared/infra/infra.js';
import { createRootLogger } from './shared/core/logger.js';
import { createShutdown, type CloseSteps } from './app/shutdown.js';
import { createExitAfterLogs } from './app/exit-after-logs.js';

type Role = 'all' | 'api' | 'worker' | 'migrate';

/** First start on embedded defaults: a dev org and key, printed once and kept in `<DATA_DIR>/dev-api-key`. */
async function ensureDevKey(cfg: Config, infra: Infra) {
  const file = join(cfg.DATA_DIR, 'dev-api-key');
  if (cfg.DATABASE_URL || existsSync(file)) return;
  const { key } = await createApiKeyStore({ pool: infra.db.pool }).create({ orgId: 'dev', role: 'org-admin' });
  mkdirSync(cfg.DATA_DIR, { recursive: true });
  writeFileSync(file, key + '\n', { mode: 0o600 });
  // Printed to the terminal once, on purpose, and never through the logger.
  process.stdout.write(`\n  Dev API key (org "dev", also saved to ${file}):\n  ${key}\n\n`);
}

async function main(role: Role) {
  const cfg = parseConfig();
  // Before Redis and the migrations: a serving process without a key it needs stops at once.
  if (role !== 'migrate') assertGeminiConfigured(cfg);
  const logger = createRootLogger(cfg);
  // Every exit waits for the log lines written so far to come out in order (pino writes asynchronously), up to 1 s.
  const exit = createExitAfterLogs();
  // Until the process serves, an uncaught exception or a stray rejection fails the start as a start-up error does
  // (logged, JSON and redacted, then exit 1); once it serves, it drains through the one shutdown (below).
  const failedStart = (kind: 'uncaughtException' | 'unhandledRejection') => (err: unknown) => {
    logger.fatal({ err, kind }, `${kind} during start-up`);
    exit(1);
  };
  const startException = failedStart('uncaughtException');
  const startRejection = failedStart('unhandledRejection');
  process.on('uncaughtException', startException);
  process.on('unhandledRejection', startRejection);

  // The one shutdown, from the first step: a signal during start-up lets the step in progress end (a migration is
  // never cut short), starts nothing more, and closes what was opened, newest first; the shutdown's deadline bounds
  // a step that hangs. Without it the signal's default action killed the process mid-step.
  const opened: Array<{ name: string; close: (steps: CloseSteps) => unknown }> = [];
  let step: Promise<unknown> = Promise.resolve();
  let serving = false;
  let stopping = false;
  const stop = createShutdown({
    logger,
    graceMs: cfg.SHUTDOWN_GRACE_MS,
    exit,
    async close(steps) {
      stopping = true;
      if (!serving) {
        logger.info('stopping during start-up: once the step in progress ends, nothing more starts');
        await steps.run('start-up step', () => step.catch(() => undefined));
      }
      for (const part of [...opened].reverse()) await steps.run(part.name, () => part.close(steps));
    },
  });
  process.on('SIGTERM', () => stop.signal('SIGTERM'));
  process.on('SIGINT', () => stop.signal('SIGINT'));
  /** Awaits one start-up step; once a stop began, start-up goes no further (the shutdown exits the process). */
  const startStep = async <T>(run: Promise<T>): Promise<T> => {
    step = run;
    const value = await run;
    if (stopping) await new Promise<never>(() => undefined);
    return value;
  };

  const infra = await startStep(openInfra(cfg, logger));
  opened.push({ name: 'infrastructure', close: () => infra.close() });
  if (role === 'migrate') {
    logger.info('migrations up to date');
    await infra.close();
    return;
  }
  // Loaded only to serve: `migrate` (a deploy step, an init container) starts in about half the time
  // without the SDKs, fastify and the features.
  const [{ startTracing }, { geminiOptionsFromConfig, startGemini }, { startRuntime }, { defaultFeatures }, { defaultRegistry }, { listen }] = await startStep(
    Promise.all([
      import('./app/tracing.js'),
      import('./app/gemini.js'),
      import('./app/runtime.js'),
      import('./app/features.js'),
      import('./shared/agents/registry.js'),
      import('./producers/server.js'),
    ]),
  );
  // Before anything opens a span; undefined (nothing started, no-op tracer) unless an OTLP endpoint is set.
  const tracing = startTracing(cfg, logger, { role });
  // After the runtime's close: the spans of the jobs that finished during the grace period are exported too.
  opened.push({ name: 'tracing', close: () => tracing?.shutdown() });
  const gemini = await startStep(startGemini(geminiOptionsFromConfig(cfg, logger)));
  opened.push({ name: 'gemini', close: () => gemini.close() });
  const runtime = await startStep(
    startRuntime({
      cfg,
      infra,
      logger,
      registry: defaultRegistry(),
      llm: gemini.llm,
      batches: gemini.batches,
      api: role !== 'worker',
      worker: role !== 'api',
      features: defaultFeatures,
    }),
  );
  // The drain gets SHUTDOWN_GRACE_MS, the whole shutdown a deadline a margin past it (app/shutdown.ts). Its parts'
  // failures are logged and counted in `steps` already.
  opened.push({ name: 'runtime', close: (steps) => runtime.close(cfg.SHUTDOWN_GRACE_MS, steps).catch(() => undefined) });
  if (runtime.app) {
    await startStep(ensureDevKey(cfg, infra));
    logger.info({ address: await startStep(listen(runtime.app, cfg.HOST, cfg.PORT)) }, 'API listening');
  }
  if (role !== 'api') logger.info({ concurrency: cfg.WORKER_CONCURRENCY }, 'worker started');
  serving = true;
  process.off('uncaughtException', startException).on('uncaughtException', (err) => stop.fatal('uncaughtException', err));
  process.off('unhandledRejection', startRejection).on('unhandledRejection', (err) => stop.fatal('unhandledRejection', err));
}

const role = (process.argv[2] ?? 'all') as Role;
if (!['all', 'api', 'worker', 'migrate'].includes(role)) {
  console.error(`usage: main.ts all|api|worker|migrate (got "${role}")`);
  process.exit(2);
}
main(role).catch((err) => {
  // Start-up failures are one readable line, not a stack trace.
  const message = err instanceof ConfigError ? err.message : `agentq failed to start: ${err instanceof Error ? err.message : String(err)}`;
  console.error(message);
  process.exit(1);
});
