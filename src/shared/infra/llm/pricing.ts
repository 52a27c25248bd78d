import type { TokenUsage } from '../../core/types.js';

/** USD per 1M tokens. `longContext` applies to the whole call once the prompt exceeds its threshold. */
export interface ModelPrice {
  input: number;
  output: number;
  longContext?: { aboveInputTokens: number; input: number; output: number };
}

/**
 * Gemini Developer API list prices (paid tier, text, standard processing), as published on
 * ai.google.dev/pricing in 2025. Thinking tokens bill as output and arrive in the output count.
 */
export const PRICES: Readonly<Record<string, ModelPrice>> = {
  'gemini-2.5-pro': { input: 1.25, output: 10, longContext: { aboveInputTokens: 200_000, input: 2.5, output: 15 } },
  'gemini-2.5-flash': { input: 0.3, output: 2.5 },
  'gemini-2.5-flash-lite': { input: 0.1, output: 0.4 },
  'gemini-2.0-flash': { input: 0.1, output: 0.4 },
  'gemini-2.0-flash-lite': { input: 0.075, output: 0.3 },
  'gemini-3-pro-preview': { input: 2, output: 12, longContext: { aboveInputTokens: 200_000, input: 4, output: 18 } },
  'gemini-3-flash-preview': { input: 0.5, output: 3 },
  'gemini-embedding-001': { input: 0.15, output: 0 },
};

/**
 * Unknown models are charged like gemini-2.5-pro, the dearest common tier: a budget guard that
 * over-counts an unfamiliar model is safer than one that lets it run free.
 */
export const DEFAULT_PRICE: ModelPrice = PRICES['gemini-2.5-pro'];

/** Exact name first, then the longest known prefix ("gemini-2.5-flash-preview-09-2025" bills as gemini-2.5-flash). */
export function priceOf(model: string): ModelPrice {
  const name = model.replace(/^models\//, '');
  if (PRICES[name]) return PRICES[name];
  let best: string | undefined;
  for (const known of Object.keys(PRICES)) {
    if (name.startsWith(known) && (!best || known.length > best.length)) best = known;
  }
  return best ? PRICES[best] : DEFAULT_PRICE;
}

export function costUsd(model: string, usage: TokenUsage): number {
  const p = priceOf(model);
  const rate = p.longContext && usage.input > p.longContext.aboveInputTokens ? p.longContext : p;
  const usd = (usage.input * rate.input + usage.output * rate.output) / 1_000_000;
  // Trim float noise (0.1 + 0.2 style) without losing sub-micro-dollar precision.
  return Math.round(usd * 1e12) / 1e12;
}
