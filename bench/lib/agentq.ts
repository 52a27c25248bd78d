import type { Job, Worker } from 'bullmq';
import type { FastifyInstance } from 'fastify';
import { defaultFeatures } from '../../src/app/features.js';
import { startRuntime, type FeatureFactory, type Runtime } from '../../src/app/runtime.js';
import { defaultRegistry } from '../../src/shared/agents/registry.js';
import type { Config } from '../../src/shared/core/config.js';
import type { Infra } from '../../src/shared/infra/infra.js';
import { startGemini, type GeminiSetup } from '../../src/app/gemini.js';
import { createLogger } from '../../src/shared/core/logger.js';
import type { AgentJobData, AgentResult } from '../../src/shared/core/types.js';
import type { BenchInfra } from './infra.js';

export interface AgentqUnderTest {
  cfg: Config;
  runtime: Runtime;
  gemini: GeminiSetup;
  app?: FastifyInstance;
  /** The BullMQ workers the runtime started, as features see them. */
  workers: Array<Worker<AgentJobData, AgentResult>>;
  startWorker(): Promise<Worker<AgentJobData, AgentResult>>;
  close(): Promise<void>;
}

/**
 * agentq as `npm start` composes it (the same `startRuntime`, the shipped features, the real SDK), in
 * this process (or a bench child), against the bench's infrastructure. Workers are started on demand so queues can be
 * filled first; `onCompleted` sees every completed job without any Redis command of the bench's own.
 */
export async function startAgentq(
  b: Pick<BenchInfra, 'config' | 'infra' | 'emulatorUrl'>,
  opts: {
    env?: Record<string, string>;
    api?: boolean;
    onCompleted?: (job: Job<AgentJobData, AgentResult>) => void;
    /** Ablation only: the per-attempt `agent_runs` INSERT answers at once without reaching Postgres. */
    skipRunRows?: boolean;
    /** Baseline only: no fair dispatcher (jobs straight to BullMQ's wait list, workers without the gate). */
    fairDispatch?: boolean;
  } = {},
): Promise<AgentqUnderTest> {
  const cfg = b.config(opts.env);
  const infra = opts.skipRunRows ? withoutRunRows(b.infra) : b.infra;
  const logger = createLogger({ level: 'silent' });
  const gemini = await startGemini({
    apiKey: cfg.GEMINI_API_KEY,
    baseUrl: b.emulatorUrl,
    models: { fast: cfg.GEMINI_MODEL_FAST, pro: cfg.GEMINI_MODEL_PRO, embedding: cfg.GEMINI_EMBEDDING_MODEL },
    timeoutMs: cfg.LLM_TIMEOUT_MS,
    logger,
    transport: cfg.LLM_HTTP_TRANSPORT,
  });
  const workers: Array<Worker<AgentJobData, AgentResult>> = [];
  const probe: FeatureFactory = () => ({
    name: 'bench-probe',
    attachWorker(worker) {
      workers.push(worker);
      if (opts.onCompleted) worker.on('completed', opts.onCompleted);
    },
  });
  const runtime = await startRuntime({
    cfg,
    infra,
    logger,
    registry: defaultRegistry(),
    llm: gemini.llm,
    batches: gemini.batches,
    api: opts.api ?? false,
    worker: false,
    features: [...defaultFeatures, probe],
    ...(opts.fairDispatch === false ? { fairDispatch: false } : {}),
  });
  return {
    cfg,
    runtime,
    gemini,
    app: runtime.app,
    workers,
    async startWorker() {
      await runtime.startWorker();
      return workers[workers.length - 1];
    },
    async close() {
      await runtime.close(2000);
      await gemini.close();
    },
  };
}

/** The same infrastructure, except that inserts into `agent_runs` resolve at once without a query. */
function withoutRunRows(infra: Infra): Infra {
  const real = infra.db.pool;
  const pool = new Proxy(real, {
    get(target, prop) {
      if (prop === 'query') {
        return (sql: unknown, params?: unknown[]) =>
          typeof sql === 'string' && sql.includes('INSERT INTO agent_runs') ? Promise.resolve({ rows: [], rowCount: 1 }) : target.query(sql as string, params);
      }
      const v = Reflect.get(target, prop, target) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
  return { ...infra, db: { ...infra.db, pool } };
}

/** A RiskAnalyzer input; `n` makes it unique (a result-cache miss), a fixed `n` repeats it (a hit). */
export function riskInput(n: number | string) {
  return {
    startup: {
      name: `Bench Co ${n}`,
      industry: 'logistics',
      stage: 'seed' as const,
      description: 'Route planning software for regional parcel carriers; 12 pilots, 3 paying customers.',
    },
  };
}

export const RISK_REQUEST = (n: number | string) => ({ agent: 'RiskAnalyzer', action: 'analyze_risks', input: riskInput(n) });
