import type { FastifyInstance } from 'fastify';
import type pg from 'pg';
import { defaultFeatures } from '../../src/app/features.js';
import { startRuntime, type FeatureFactory, type Runtime } from '../../src/app/runtime.js';
import { defaultRegistry } from '../../src/shared/agents/registry.js';
import { parseConfig, type Config } from '../../src/shared/core/config.js';
import { createApiKeyStore } from '../../src/shared/infra/db/api-keys.js';
import type { TenantRole } from '../../src/shared/core/roles.js';
import { migrate } from '../../src/shared/infra/db/migrate.js';
import { createPool } from '../../src/shared/infra/db/pool.js';
import { startGeminiEmulator, type GeminiEmulator } from '../../dev/gemini-emulator/emulator.js';
import type { Infra } from '../../src/shared/infra/infra.js';
import { geminiOptionsFromConfig, startGemini } from '../../src/app/gemini.js';
import { createLogger, type Logger } from '../../src/shared/core/logger.js';
import type { WorkerService } from '../../src/workers/worker-service.js';
import { databaseUrl, randomOrg, randomPrefix, redisUrl } from './env.js';
import { redisTargetOf } from '../../src/shared/infra/redis/connection.js';
import { startModelGate, type ModelGate } from './model-gate.js';

export interface Stack {
  cfg: Config;
  infra: Infra;
  runtime: Runtime;
  app: FastifyInstance;
  emulator: GeminiEmulator;
  /** With `modelGate: true`: the proxy every model call goes through, which holds chosen calls open (model-gate.ts). */
  modelGate?: ModelGate;
  orgId: string;
  apiKey: string;
  /** Authorization header for `app.inject`. */
  auth: { authorization: string };
  logger: Logger;
  startWorker(): Promise<WorkerService>;
  /** A key of `orgId` (a fresh org by default); `operatorKey()` makes the platform's. */
  newKey(orgId?: string, role?: TenantRole): Promise<string>;
  operatorKey(): Promise<string>;
  close(): Promise<void>;
}

/** Test-friendly timings; any of them can be overridden per stack. */
export const TEST_ENV: Record<string, string> = {
  NODE_ENV: 'test',
  AUTH_CACHE_TTL_MS: '0',
  LOCK_DURATION_MS: '5000',
  STALLED_INTERVAL_MS: '2000',
  BACKOFF_BASE_MS: '50',
  BACKOFF_MAX_MS: '500',
  SHUTDOWN_GRACE_MS: '5000',
  // A killed worker's unwritten usage rows are taken over by another worker's sink this soon.
  USAGE_SINK_CLAIM_IDLE_MS: '2000',
  RATE_LIMIT_PLANS: JSON.stringify({ general: { points: 100_000, durationS: 1 } }),
  // A machine loaded to several times its cores stretches one Redis reply past the production defaults
  // (2 s, 5 s); the tests of those deadlines set their own.
  REDIS_COMMAND_TIMEOUT_MS: '20000',
  ENQUEUE_DEADLINE_MS: '30000',
};

let migrated: Promise<unknown> | undefined;

/**
 * The whole service in-process (the same composition root as `npm start`) against the suite's Redis and
 * PGlite: a random queue prefix, a fresh org and key, and the Gemini emulator on loopback reached by the
 * real SDK. `worker: true` also runs an agent worker and the features' background work.
 */
export async function startStack(
  env: Record<string, string> = {},
  /**
   * `pool`: wraps the runtime's Postgres pool (a test makes it fail like a Postgres that is down). `fairDispatch:
   * false`: the runtime's bench baseline, workers without the fair gate (jobs straight to BullMQ's wait list).
   * `modelGate: true`: the SDK reaches the emulator through a model gate, so a test holds calls in flight at will.
   */
  opts: { worker?: boolean; features?: FeatureFactory[]; logger?: Logger; pool?: (pool: pg.Pool) => pg.Pool; fairDispatch?: boolean; modelGate?: boolean } = {},
): Promise<Stack> {
  const cfg = parseConfig({ ...process.env, ...TEST_ENV, REDIS_URL: redisUrl(), DATABASE_URL: databaseUrl(), QUEUE_PREFIX: randomPrefix(), ...env });
  const logger = opts.logger ?? createLogger({ level: process.env.TEST_LOG_LEVEL ?? 'silent' });
  const pool = createPool(cfg.DATABASE_URL!, { max: 4 });
  migrated ??= migrate(pool);
  await migrated;
  const infra: Infra = {
    redisTarget: redisTargetOf(cfg),
    db: { pool: opts.pool ? opts.pool(pool) : pool, longPool: pool, url: cfg.DATABASE_URL!, embedded: false, close: () => pool.end() },
    close: () => pool.end(),
  };
  const emulator = await startGeminiEmulator();
  const modelGate = opts.modelGate ? await startModelGate(emulator.url) : undefined;
  const gemini = await startGemini({ ...geminiOptionsFromConfig(cfg, logger), apiKey: 'emulator-key', baseUrl: modelGate?.url ?? emulator.url });
  const runtime = await startRuntime({
    cfg,
    infra,
    logger,
    registry: defaultRegistry(),
    llm: gemini.llm,
    batches: gemini.batches,
    api: true,
    worker: Boolean(opts.worker),
    features: opts.features ?? defaultFeatures,
    ...(opts.fairDispatch === false ? { fairDispatch: false } : {}),
  });
  const keys = createApiKeyStore({ pool });
  const orgId = randomOrg();
  const { key } = await keys.create({ orgId });

  return {
    cfg,
    infra,
    runtime,
    app: runtime.app!,
    emulator,
    ...(modelGate ? { modelGate } : {}),
    orgId,
    apiKey: key,
    auth: { authorization: `Bearer ${key}` },
    logger,
    startWorker: () => runtime.startWorker(),
    async newKey(org = randomOrg(), role: TenantRole = 'member') {
      return (await keys.create({ orgId: org, role })).key;
    },
    async operatorKey() {
      return (await keys.create({ role: 'operator' })).key;
    },
    async close() {
      await runtime.close(1000);
      await gemini.close();
      await modelGate?.close();
      await emulator.close();
      await pool.end();
    },
  };
}
