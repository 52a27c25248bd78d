import { promptTokens } from './answer-builder.js';
import type { WireGenerateRequest, WireUsage } from './gemini-wire.js';
import { hash32 } from './seeded.js';
import { countTokens } from './tokenizer.js';

export interface UsageModelOptions {
  /**
   * Gemini 2.5 caches a repeated prompt prefix implicitly once it reaches a model-specific minimum (1,024
   * tokens for Flash, 2,048 for Pro in 2025). The emulator caches a repeated system instruction of at least
   * this many tokens: its second and later uses are reported as `cachedContentTokenCount`.
   */
  implicitCacheMinTokens?: number;
  /** Think when the request does not say (`thinkingConfig` absent), as 2.5 Flash and Pro do by default. */
  thinkingByDefault?: boolean;
}

export type ServiceTierName = 'standard' | 'flex' | 'priority';

/** The values Gemini accepts for `serviceTier` (the SDK sends the lower-case enum value). */
export function parseServiceTier(raw: unknown): ServiceTierName | undefined | Error {
  if (raw === undefined || raw === null) return undefined;
  const v = String(raw).toLowerCase().replace(/^service_tier_/, '');
  if (v === 'unspecified' || v === 'standard') return 'standard';
  if (v === 'flex' || v === 'priority') return v;
  return new Error(`Invalid value at 'service_tier' (type.googleapis.com/google.ai.generativelanguage.v1beta.ServiceTier), "${String(raw)}"`);
}

/** Models that cannot think (Gemini answers 400 to a thinking budget for them). */
const NON_THINKING = /^gemini-(1\.|2\.0-)/;

/**
 * Token accounting beyond prompt and candidates: implicit-cache hits and thinking tokens. Deterministic:
 * the thinking count is a pure function of the model, the request and the answer's length; the cache
 * depends only on which system instructions this emulator has already seen (in call order).
 */
export function createUsageModel(opts: UsageModelOptions = {}) {
  let minTokens = opts.implicitCacheMinTokens ?? 1024;
  let thinkingByDefault = opts.thinkingByDefault ?? false;
  const seen = new Set<string>();

  function thoughts(model: string, req: WireGenerateRequest, output: number): number {
    const tc = req.generationConfig?.thinkingConfig as { thinkingBudget?: number } | undefined;
    const budget = tc?.thinkingBudget;
    if (NON_THINKING.test(model) || budget === 0) return 0;
    if (tc === undefined && !thinkingByDefault) return 0;
    if (tc !== undefined && budget === undefined && !thinkingByDefault) return 0;
    // Between 1x and 3x the answer's length, fixed per request, within the budget (-1 = dynamic).
    const factor = 1 + (hash32(JSON.stringify([model, req.systemInstruction ?? null, req.contents])) % 200) / 100;
    const want = Math.max(1, Math.ceil(output * factor));
    return typeof budget === 'number' && budget > 0 ? Math.min(budget, want) : want;
  }

  function cached(model: string, req: WireGenerateRequest): number {
    if (!req.systemInstruction) return 0;
    const sys = promptTokens({ systemInstruction: req.systemInstruction, contents: [] });
    if (sys < minTokens) return 0;
    const key = `${model}\u0000${hash32(JSON.stringify(req.systemInstruction))}`;
    if (seen.has(key)) return sys;
    if (seen.size > 10_000) seen.clear();
    seen.add(key);
    return 0;
  }

  return {
    /** Adds cache hits, thinking tokens and the tier to a base usage (prompt + candidates). */
    complete(model: string, req: WireGenerateRequest, base: WireUsage, tier: ServiceTierName | 'omit' | undefined): WireUsage {
      const hit = cached(model, req);
      const thought = thoughts(model, req, base.candidatesTokenCount);
      return {
        ...base,
        totalTokenCount: base.promptTokenCount + base.candidatesTokenCount + thought,
        ...(hit > 0 ? { cachedContentTokenCount: hit, cacheTokensDetails: [{ modality: 'TEXT' as const, tokenCount: hit }] } : {}),
        ...(thought > 0 ? { thoughtsTokenCount: thought } : {}),
        ...(tier === 'omit' ? {} : { serviceTier: tier ?? 'standard' }),
      };
    },
    configure(o: UsageModelOptions): void {
      if (o.implicitCacheMinTokens !== undefined) {
        if (!(Number.isInteger(o.implicitCacheMinTokens) && o.implicitCacheMinTokens >= 1)) throw new RangeError('implicitCacheMinTokens must be a positive integer');
        minTokens = o.implicitCacheMinTokens;
      }
      if (o.thinkingByDefault !== undefined) thinkingByDefault = !!o.thinkingByDefault;
    },
    reset(): void {
      seen.clear();
      minTokens = opts.implicitCacheMinTokens ?? 1024;
      thinkingByDefault = opts.thinkingByDefault ?? false;
    },
  };
}

export type UsageModel = ReturnType<typeof createUsageModel>;

/** The model read the prompt: the prompt's side of a usage (details, an implicit-cache hit, the tier), no output. */
export function promptUsage(usage: WireUsage): Record<string, unknown> {
  const { promptTokenCount, cachedContentTokenCount, cacheTokensDetails, serviceTier } = usage;
  return {
    promptTokenCount,
    totalTokenCount: promptTokenCount,
    promptTokensDetails: usage.promptTokensDetails,
    ...(cachedContentTokenCount ? { cachedContentTokenCount, cacheTokensDetails } : {}),
    ...(serviceTier !== undefined ? { serviceTier } : {}),
  };
}

/**
 * Models whose streams count the text as they go: Gemini 2.5's text chunks each carry a running (cumulative)
 * `candidatesTokenCount` (FirebaseExtended/vertexai-sdk-test-data googleai streaming-success-thinking-reply-thought-summary.txt
 * and streaming-success-url-context.txt, gemini-2.5-flash: 22 then 48, 13, 30, 76 then 81; pydantic/pydantic-ai#1577,
 * gemini-2.5-pro: 625, 650, ...). Gemini 2.0's carry none before the last (streaming-success-basic-reply-*.txt,
 * streaming-success-citations.txt, gemini-2.0-flash), nor does the one later recording (streaming-failure-recitation-
 * no-content.txt); the other models here follow those.
 */
const RUNNING_COUNT = /^gemini-2\.5-/;

/**
 * The usage on every chunk of a stream but its last, as Gemini streams it: the prompt's, and when the call thought,
 * the thinking done so far (streaming-success-thinking-*.txt: each chunk's `thoughtsTokenCount`, in its
 * `totalTokenCount`; the emulator thinks before its first text, so every text chunk carries all of it); on a 2.5
 * model (`RUNNING_COUNT`) also the text streamed so far, `textSoFar` (this chunk's included), as a running
 * `candidatesTokenCount`, in the total too, with no `candidatesTokensDetails` (as recorded). The last chunk, with
 * the finishReason, carries the whole usage. So a stream cut before its last chunk has told the client what the
 * prompt (and the thinking) cost, and on 2.5 the text it got: a client takes the last chunk's usage, never a sum.
 */
export function chunkUsage(usage: WireUsage, model: string, textSoFar: string): Record<string, unknown> {
  const thoughts = usage.thoughtsTokenCount ?? 0;
  const out = reportedOutput(model, textSoFar);
  const prompt = promptUsage(usage);
  return {
    ...prompt,
    // proto3 JSON leaves a zero count out.
    ...(out > 0 ? { candidatesTokenCount: out } : {}),
    totalTokenCount: usage.promptTokenCount + out + thoughts,
    ...(thoughts > 0 ? { thoughtsTokenCount: thoughts } : {}),
  };
}

/** The candidates tokens a stream's chunk reported (`chunkUsage`): what a client cut off after it was told the text cost. */
export function reportedOutput(model: string, textSoFar: string): number {
  return RUNNING_COUNT.test(model) ? countTokens(textSoFar) : 0;
}
