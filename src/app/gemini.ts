import { assertGeminiConfigured, type Config } from '../shared/core/config.js';
import { startGeminiEmulator, type GeminiEmulator, type GeminiEmulatorOptions } from '../../dev/gemini-emulator/emulator.js';
import type { Logger } from '../shared/core/logger.js';
import { createLlmClient, type LlmClient } from '../shared/infra/llm/llm-client.js';
import { createPricing, type Pricing } from '../shared/infra/llm/pricing.js';
import { createBatchApi, type BatchApi } from '../shared/infra/llm/batch-api.js';
import { createNodeHttpFetch, nodeUsesEnvProxy } from '../shared/infra/llm/node-http-fetch.js';

export interface GeminiModels {
  fast: string;
  pro: string;
  embedding: string;
}

export interface GeminiSetup {
  llm: LlmClient;
  /** Gemini Batch Mode (the batch tier), on the same key and endpoint. */
  batches: BatchApi;
  models: GeminiModels;
  /** Set only when the in-process emulator is serving (no API key). */
  emulator?: GeminiEmulator;
  close(): Promise<void>;
}

export interface GeminiSetupOptions {
  apiKey?: string;
  /** An explicit endpoint (e.g. an emulator in another process). Unset: the SDK's default. */
  baseUrl?: string;
  models: GeminiModels;
  timeoutMs: number;
  logger: Logger;
  emulator?: GeminiEmulatorOptions;
  pricing?: Pricing;
  /** `node-http`: the SDK's requests over node:http(s) agents (node-http-fetch.ts); default the SDK's own fetch. */
  transport?: 'fetch' | 'node-http';
}

/** The key the SDK sends to an emulator; the emulator only checks that one is present. */
const EMULATOR_KEY = 'emulator-no-real-key';

/**
 * With an API key: a client that talks to Gemini exactly as the SDK does by default. Without one:
 * the emulator on loopback and a client pointed at it, announced loudly, because every answer is then
 * synthetic. A key never starts the emulator; a `baseUrl` without a key uses that endpoint instead.
 */
export async function startGemini(opts: GeminiSetupOptions): Promise<GeminiSetup> {
  // One set of agents (connection pools) for the process's calls and batches.
  const transport = opts.transport === 'node-http' && !proxiedByNode(opts.logger) ? { fetch: createNodeHttpFetch() } : {};
  const common = { timeoutMs: opts.timeoutMs, logger: opts.logger, embeddingModel: opts.models.embedding, pricing: opts.pricing, ...transport };
  if (opts.apiKey || opts.baseUrl) {
    const llm = createLlmClient({ ...common, apiKey: opts.apiKey ?? EMULATOR_KEY, baseUrl: opts.baseUrl });
    const batches = createBatchApi({ apiKey: opts.apiKey ?? EMULATOR_KEY, baseUrl: opts.baseUrl, pricing: opts.pricing, logger: opts.logger, ...transport });
    return { llm, batches, models: opts.models, close: async () => undefined };
  }
  const emulator = await startGeminiEmulator({ host: '127.0.0.1', ...opts.emulator });
  opts.logger.warn(
    { emulator: emulator.url },
    'Neither GEMINI_API_KEY nor GOOGLE_API_KEY is set: using the built-in Gemini EMULATOR. Every answer and embedding is SYNTHETIC, made up from the prompt, not produced by a model. Set GEMINI_API_KEY (or GOOGLE_API_KEY) for real answers.',
  );
  const llm = createLlmClient({ ...common, apiKey: EMULATOR_KEY, baseUrl: emulator.url });
  const batches = createBatchApi({ apiKey: EMULATOR_KEY, baseUrl: emulator.url, pricing: opts.pricing, logger: opts.logger, ...transport });
  return { llm, batches, models: opts.models, emulator, close: () => emulator.close() };
}

/**
 * With Node set to follow the environment's proxies, LLM_HTTP_TRANSPORT=node-http is not used: its agents would
 * go around the proxy the SDK's own fetch goes through (NO_PROXY included). Said once, at start.
 */
function proxiedByNode(logger: Logger): boolean {
  if (!nodeUsesEnvProxy()) return false;
  logger.warn('LLM_HTTP_TRANSPORT=node-http is not used: Node is set to follow the environment\'s proxies (NODE_USE_ENV_PROXY / --use-env-proxy), which only the SDK\'s own fetch does; the SDK\'s fetch is used');
  return true;
}

/**
 * The runtime options a process derives from its config; `baseUrl` overrides the endpoint (tests, gateways).
 * Throws a ConfigError where the config has no key and does not allow the emulator (assertGeminiConfigured).
 */
export function geminiOptionsFromConfig(
  cfg: Pick<Config, 'NODE_ENV' | 'GEMINI_API_KEY' | 'GEMINI_EMULATOR' | 'GEMINI_MODEL_FAST' | 'GEMINI_MODEL_PRO' | 'GEMINI_EMBEDDING_MODEL' | 'LLM_TIMEOUT_MS'> &
    Partial<Pick<Config, 'GOOGLE_API_KEY' | 'PRICES_JSON' | 'LLM_HTTP_TRANSPORT'>>,
  logger: Logger,
): GeminiSetupOptions {
  assertGeminiConfigured(cfg);
  if (cfg.GOOGLE_API_KEY && cfg.GEMINI_API_KEY) logger.warn('both GOOGLE_API_KEY and GEMINI_API_KEY are set: GOOGLE_API_KEY is used, as the SDK does');
  return {
    // The key the SDK itself would pick from the environment.
    apiKey: cfg.GOOGLE_API_KEY ?? cfg.GEMINI_API_KEY,
    models: { fast: cfg.GEMINI_MODEL_FAST, pro: cfg.GEMINI_MODEL_PRO, embedding: cfg.GEMINI_EMBEDDING_MODEL },
    timeoutMs: cfg.LLM_TIMEOUT_MS,
    logger,
    pricing: createPricing(cfg.PRICES_JSON),
    ...(cfg.LLM_HTTP_TRANSPORT ? { transport: cfg.LLM_HTTP_TRANSPORT } : {}),
  };
}
