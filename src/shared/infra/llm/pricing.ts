import type { PriceOverrides } from '../../core/config.js';
import type { ServiceTier, TokenUsage } from '../../core/types.js';

/** USD per 1M tokens. `cachedInput`: prompt tokens served from the (implicit) cache. */
export interface ModelPrice {
  input: number;
  output: number;
  cachedInput?: number;
  /** Applies to the whole call once the prompt exceeds its threshold. */
  longContext?: { aboveInputTokens: number; input: number; output: number; cachedInput?: number };
}

export interface PriceTable {
  /** The day these prices were read, and where: prices change, so a ledger says which ones it used. */
  asOf: string;
  source: string;
  models: Record<string, ModelPrice>;
  /** Multiplier of the standard price per service tier (Batch and Flex bill at half price). */
  tiers: Record<ServiceTier, number>;
  /** Models not in the table bill like this one (the dearest common model: over-counting is the safe error). */
  fallbackModel: string;
}

/**
 * Gemini Developer API list prices, paid tier, text. Thinking tokens bill as output. Batch Mode and
 * Flex bill at 50% of standard; Priority's premium (x1.8 here) is the one figure not on the public page
 * when this was written: override it (and anything else) with PRICES_JSON.
 */
export const DEFAULT_PRICES: PriceTable = {
  asOf: '2025-11-15',
  source: 'https://ai.google.dev/gemini-api/docs/pricing (paid tier, text; Batch Mode 50% of standard; Flex 50%)',
  models: {
    'gemini-2.5-pro': { input: 1.25, output: 10, cachedInput: 0.125, longContext: { aboveInputTokens: 200_000, input: 2.5, output: 15, cachedInput: 0.25 } },
    'gemini-2.5-flash': { input: 0.3, output: 2.5, cachedInput: 0.03 },
    'gemini-2.5-flash-lite': { input: 0.1, output: 0.4, cachedInput: 0.01 },
    'gemini-2.0-flash': { input: 0.1, output: 0.4, cachedInput: 0.025 },
    'gemini-2.0-flash-lite': { input: 0.075, output: 0.3 },
    'gemini-3-pro-preview': { input: 2, output: 12, cachedInput: 0.2, longContext: { aboveInputTokens: 200_000, input: 4, output: 18, cachedInput: 0.4 } },
    'gemini-3-flash-preview': { input: 0.5, output: 3, cachedInput: 0.05 },
    // $0.15 per 1M input tokens (https://ai.google.dev/gemini-api/docs/pricing, gemini-embedding-001, paid tier); an
    // embedding has no output. Its answers carry no usage metadata: agentq estimates its tokens (agent_runs, migration 023).
    'gemini-embedding-001': { input: 0.15, output: 0 },
  },
  tiers: { standard: 1, flex: 0.5, batch: 0.5, priority: 1.8 },
  fallbackModel: 'gemini-2.5-pro',
};

/** One attempt's cost, and what the same tokens would have cost on the standard tier (savings = the difference). */
export interface CostBreakdown {
  costUsd: number;
  standardCostUsd: number;
}

// Trim float noise (0.1 + 0.2 style) without losing sub-micro-dollar precision.
const usd = (n: number) => Math.round(n * 1e12) / 1e12;

export interface Pricing {
  readonly table: PriceTable;
  priceOf(model: string): ModelPrice;
  cost(model: string, usage: TokenUsage, tier?: ServiceTier): CostBreakdown;
}

/** The table with PRICES_JSON applied: per-model fields and tier multipliers replace the defaults one by one. */
export function createPricing(overrides: PriceOverrides = {}): Pricing {
  const table: PriceTable = {
    ...DEFAULT_PRICES,
    ...(overrides.asOf ? { asOf: overrides.asOf } : {}),
    ...(overrides.source ? { source: overrides.source } : {}),
    models: { ...DEFAULT_PRICES.models },
    tiers: { ...DEFAULT_PRICES.tiers, ...overrides.tiers },
  };
  for (const [name, p] of Object.entries(overrides.models ?? {})) {
    const base = table.models[name];
    if (!base && (p.input === undefined || p.output === undefined)) throw new RangeError(`PRICES_JSON: new model ${name} needs input and output prices`);
    table.models[name] = { ...base, ...p } as ModelPrice;
  }

  /** Exact name first, then the longest known prefix ("gemini-2.5-flash-preview-09-2025" bills as gemini-2.5-flash). */
  function priceOf(model: string): ModelPrice {
    const name = model.replace(/^models\//, '');
    if (table.models[name]) return table.models[name];
    let best: string | undefined;
    for (const known of Object.keys(table.models)) {
      if (name.startsWith(known) && (!best || known.length > best.length)) best = known;
    }
    return table.models[best ?? table.fallbackModel] ?? DEFAULT_PRICES.models[DEFAULT_PRICES.fallbackModel];
  }

  return {
    table,
    priceOf,
    cost(model, usage, tier = 'standard') {
      const p = priceOf(model);
      const rate = p.longContext && usage.input > p.longContext.aboveInputTokens ? p.longContext : p;
      const cached = Math.min(Math.max(0, usage.cached ?? 0), usage.input);
      // Thinking tokens arrive inside `output` (see TokenUsage) and bill at the output price.
      const standard = ((usage.input - cached) * rate.input + cached * (rate.cachedInput ?? rate.input) + usage.output * rate.output) / 1_000_000;
      return { costUsd: usd(standard * table.tiers[tier]), standardCostUsd: usd(standard) };
    },
  };
}

const defaultPricing = createPricing();

/** Standard-tier cost with the built-in table (budget guards, estimates). */
export function costUsd(model: string, usage: TokenUsage, tier: ServiceTier = 'standard'): number {
  return defaultPricing.cost(model, usage, tier).costUsd;
}

export function priceOf(model: string): ModelPrice {
  return defaultPricing.priceOf(model);
}

export const PRICES = DEFAULT_PRICES.models;

/** What a model missing from the table bills as. */
export const DEFAULT_PRICE: ModelPrice = DEFAULT_PRICES.models[DEFAULT_PRICES.fallbackModel];
