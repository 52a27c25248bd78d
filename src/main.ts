import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { assertGeminiConfigured, ConfigError, parseConfig, type Config } from './shared/core/config.js';
import { createApiKeyStore } from './shared/infra/db/api-keys.js';
import { openInfra, type Infra } from './shared/infra/infra.js';
import { createRootLogger } from './shared/core/logger.js';

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
  const infra = await openInfra(cfg, logger);
  if (role === 'migrate') {
    logger.info('migrations up to date');
    await infra.close();
    return;
  }
  // Loaded only to serve: `migrate` (a deploy step, an init container) starts in about half the time
  // without the SDKs, fastify and the features.
  const [{ startTracing }, { geminiOptionsFromConfig, startGemini }, { startRuntime }, { defaultFeatures }, { defaultRegistry }, { listen }] = await Promise.all([
    import('./app/tracing.js'),
    import('./app/gemini.js'),
    import('./app/runtime.js'),
    import('./app/features.js'),
    import('./shared/agents/registry.js'),
    import('./producers/server.js'),
  ]);
  // Before anything opens a span; undefined (nothing started, no-op tracer) unless an OTLP endpoint is set.
  const tracing = startTracing(cfg, logger, { role });
  const gemini = await startGemini(geminiOptionsFromConfig(cfg, logger));
  const runtime = await startRuntime({
    cfg,
    infra,
    logger,
    registry: defaultRegistry(),
    llm: gemini.llm,
    batches: gemini.batches,
    api: role !== 'worker',
    worker: role !== 'api',
    features: defaultFeatures,
  });
  if (runtime.app) {
    await ensureDevKey(cfg, infra);
    logger.info({ address: await listen(runtime.app, cfg.HOST, cfg.PORT) }, 'API listening');
  }
  if (role !== 'api') logger.info({ concurrency: cfg.WORKER_CONCURRENCY }, 'worker started');

  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal, graceMs: cfg.SHUTDOWN_GRACE_MS }, 'shutting down: no new jobs, finishing in-flight ones');
    await runtime.close(cfg.SHUTDOWN_GRACE_MS).catch((err) => logger.error({ err }, 'error during shutdown'));
    await gemini.close().catch(() => {});
    // After the runtime: the spans of the jobs that finished during the grace period are exported too.
    await tracing?.shutdown();
    await infra.close().catch((err) => logger.error({ err }, 'error closing infrastructure'));
    logger.info('stopped');
    process.exit(0);
  };
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
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
