import { GoogleGenAI, ServiceTier as SdkServiceTier, type Fetch, type GenerateContentConfig, type GenerateContentResponse, type GoogleGenAIOptions } from '@google/genai';
import type { Logger } from '../../core/logger.js';
import type { BilledCall, ServiceTier, TokenUsage } from '../../core/types.js';
import { carryBilled } from '../../core/outcomes.js';
import { answerEndOf, refusalOf, unfinishedOf, type AnswerEnd } from './answer-end.js';
import { LlmError, toLlmError } from './llm-errors.js';
import { createPricing, type Pricing } from './pricing.js';
import { estimateTextTokens } from '../../queue/estimate-tokens.js';
import { embeddingCallAttributes, embeddingCallName } from '../../telemetry/gen-ai.js';
import { inSpan, SpanKind } from '../../telemetry/tracing.js';

export interface GenerateRequest {
  model: string;
  system?: string;
  prompt: string;
  /** JSON Schema (e.g. `z.toJSONSchema(schema)`); asks for JSON and parses the answer into `json`. */
  responseJsonSchema?: unknown;
  signal?: AbortSignal;
  /** Overrides the client's timeout for this call. */
  timeoutMs?: number;
  /**
   * Streams: called with each piece of text as it arrives, awaited before the next. Its error ends the call and
   * propagates as it is, carrying `billed` when the chunks read had reported usage.
   */
  onText?: (text: string) => void | Promise<void>;
  maxOutputTokens?: number;
  temperature?: number;
  /** Online tiers only (Batch Mode is `ai.batches`): flex and priority are sent as `config.serviceTier`. */
  tier?: Exclude<ServiceTier, 'batch'>;
}

export interface GenerateResult {
  text: string;
  json?: unknown;
  usage: TokenUsage;
  model: string;
  costUsd: number;
  tier: ServiceTier;
  /** The same tokens on the standard tier. */
  standardCostUsd: number;
}

/**
 * What a call that answered was billed, for an error raised after the answer (it carries no text). A result
 * without a tier or standard cost (a caller's own GenerateFn) was a standard call.
 */
export function billedCall(r: Pick<GenerateResult, 'model' | 'usage' | 'costUsd'> & Partial<Pick<GenerateResult, 'tier' | 'standardCostUsd'>>): BilledCall {
  return { model: r.model, usage: r.usage, costUsd: r.costUsd, standardCostUsd: r.standardCostUsd ?? r.costUsd, tier: r.tier ?? 'standard' };
}

export interface EmbedOptions {
  signal?: AbortSignal;
  taskType?: string;
  model?: string;
}

export interface LlmClient {
  generate(req: GenerateRequest): Promise<GenerateResult>;
  /** One unit-length vector of `embeddingDims` per text, same order. */
  embed(texts: string[], opts?: EmbedOptions): Promise<number[][]>;
  readonly embeddingModel: string;
  readonly embeddingDims: number;
}

export interface LlmClientOptions {
  apiKey: string;
  /** Only for a non-default endpoint (the emulator); otherwise the SDK's default, which honours GOOGLE_GEMINI_BASE_URL. */
  baseUrl?: string;
  timeoutMs: number;
  logger?: Logger;
  embeddingModel?: string;
  embeddingDims?: number;
  /** Prices (PRICES_JSON applied); default: the built-in table. */
  pricing?: Pricing;
  /** The SDK's transport (`httpOptions.fetch`); unset: the SDK's default, the global fetch (node-http-fetch.ts says when not). */
  fetch?: Fetch;
}

/** The SDK client's options: its defaults unless an endpoint or a transport is given. */
export function sdkOptions(o: { apiKey: string; baseUrl?: string; fetch?: Fetch }): GoogleGenAIOptions {
  const httpOptions = { ...(o.baseUrl ? { baseUrl: o.baseUrl } : {}), ...(o.fetch ? { fetch: o.fetch } : {}) };
  return { apiKey: o.apiKey, vertexai: false, ...(o.baseUrl || o.fetch ? { httpOptions } : {}) };
}

const SDK_TIERS: Record<Exclude<ServiceTier, 'batch'>, SdkServiceTier> = {
  standard: SdkServiceTier.STANDARD,
  flex: SdkServiceTier.FLEX,
  priority: SdkServiceTier.PRIORITY,
};

/** Gemini's usageMetadata as a TokenUsage: thinking tokens bill as output; cached prompt tokens at a discount. */
export function usageOf(meta: GenerateContentResponse['usageMetadata'] | undefined): TokenUsage {
  const thoughts = meta?.thoughtsTokenCount ?? 0;
  const cached = meta?.cachedContentTokenCount ?? 0;
  return {
    input: meta?.promptTokenCount ?? 0,
    output: (meta?.candidatesTokenCount ?? 0) + thoughts,
    ...(cached > 0 ? { cached } : {}),
    ...(thoughts > 0 ? { thoughts } : {}),
  };
}

/**
 * The tier Gemini says it served a call at: a priority request past its priority limit (or a flex one it
 * could not place) is served, and billed, at standard. Gemini says so in the `x-gemini-service-tier` response
 * header (its documented way) and in `usageMetadata.serviceTier`; the asked-for tier when it says neither.
 */
export function servedTierOf(res: GenerateContentResponse | undefined, usage: GenerateContentResponse['usageMetadata'], asked: Exclude<ServiceTier, 'batch'>): Exclude<ServiceTier, 'batch'> {
  const said = res?.sdkHttpResponse?.headers?.['x-gemini-service-tier'] ?? (usage as { serviceTier?: unknown } | undefined)?.serviceTier;
  if (typeof said !== 'string') return asked;
  const v = said.toLowerCase().replace(/^service_tier_/, '');
  if (v === 'standard' || v === 'unspecified') return 'standard';
  return v === 'flex' || v === 'priority' ? v : asked;
}

/** What a call that reported `meta` (in `res`, its last response) is billed: its tokens at the tier Gemini says it served. */
function billOf(pricing: Pricing, req: Pick<GenerateRequest, 'model' | 'tier'>, meta: GenerateContentResponse['usageMetadata'], res: GenerateContentResponse | undefined) {
  const usage = usageOf(meta);
  const tier = servedTierOf(res, meta, req.tier ?? 'standard');
  const cost = pricing.cost(req.model, usage, tier);
  return { usage, model: req.model, costUsd: cost.costUsd, standardCostUsd: cost.standardCostUsd, tier };
}

/** Gemini's batchEmbedContents takes at most 100 requests. */
const EMBED_BATCH = 100;

/** A call the caller's signal ended: ETIMEDOUT (retryable) when the caller's reason is its own deadline. */
function callerAbort(caller: AbortSignal, what: string, cause?: unknown): LlmError {
  const timedOut = (caller.reason as { name?: unknown } | undefined)?.name === 'TimeoutError';
  return timedOut
    ? new LlmError('ETIMEDOUT', `${what} timed out (the caller's deadline)`, { cause: cause ?? caller.reason })
    : new LlmError('EABORTED', `${what} aborted by the caller`, cause === undefined ? undefined : { cause });
}

/**
 * One AbortSignal for the SDK that fires on the caller's signal or on our own deadline, remembering
 * which, so a timeout (retryable) is never confused with a cancellation (not retryable).
 */
function deadline(timeoutMs: number, caller?: AbortSignal) {
  const ac = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    ac.abort();
  }, timeoutMs);
  const onAbort = () => ac.abort();
  caller?.addEventListener('abort', onAbort, { once: true });
  return {
    signal: ac.signal,
    fail(err: unknown, what: string): LlmError {
      if (timedOut) return new LlmError('ETIMEDOUT', `${what} timed out after ${timeoutMs} ms`, { cause: err });
      // A caller's own deadline (a route's timeout aborts with a TimeoutError) is a slow upstream, like ours: it
      // counts against the model's breaker and is retried; any other caller abort (cancel, shutdown) says nothing.
      if (caller?.aborted) return callerAbort(caller, what, err);
      return toLlmError(err);
    },
    /**
     * Always called. A call that did not finish (an error, a stream left half-read) is also aborted, so its
     * socket is not kept busy. A finished one is not: an abort costs a DOMException (a stack trace) and an
     * event through the SDK's own controller, per call, for nothing once the body was read.
     */
    end(finished = false): void {
      clearTimeout(timer);
      caller?.removeEventListener('abort', onAbort);
      if (!finished && !ac.signal.aborted) ac.abort();
    },
  };
}

export function textOf(res: GenerateContentResponse): string {
  let out = '';
  for (const part of res.candidates?.[0]?.content?.parts ?? []) {
    if (typeof part.text === 'string' && !part.thought) out += part.text;
  }
  return out;
}

/** Per schema object, once: callers pass the same (cached) schema on every call of an action. */
const withoutMeta = new WeakMap<object, unknown>();
export function withoutMetaSchema(schema: unknown): unknown {
  if (!schema || typeof schema !== 'object' || Array.isArray(schema)) return schema;
  let rest = withoutMeta.get(schema);
  if (rest === undefined) {
    const { $schema: _drop, ...copy } = schema as Record<string, unknown>;
    withoutMeta.set(schema, (rest = copy));
  }
  return rest;
}

function unitLength(v: number[]): number[] {
  let n = 0;
  for (const x of v) n += x * x;
  if (n === 0) return v;
  const s = 1 / Math.sqrt(n);
  return v.map((x) => x * s);
}

export function createLlmClient(opts: LlmClientOptions): LlmClient {
  const ai = new GoogleGenAI(sdkOptions(opts));
  const log = opts.logger?.child({ component: 'llm' });
  const embeddingModel = opts.embeddingModel ?? 'gemini-embedding-001';
  const embeddingDims = opts.embeddingDims ?? 768;
  const pricing = opts.pricing ?? createPricing();

  async function generate(req: GenerateRequest): Promise<GenerateResult> {
    const what = `Gemini ${req.model} generate`;
    if (req.signal?.aborted) throw callerAbort(req.signal, what);
    const started = performance.now();
    const d = deadline(req.timeoutMs ?? opts.timeoutMs, req.signal);
    const config: GenerateContentConfig = { abortSignal: d.signal };
    if (req.system) config.systemInstruction = req.system;
    if (req.responseJsonSchema !== undefined) {
      config.responseMimeType = 'application/json';
      config.responseJsonSchema = withoutMetaSchema(req.responseJsonSchema);
    }
    if (req.maxOutputTokens !== undefined) config.maxOutputTokens = req.maxOutputTokens;
    if (req.temperature !== undefined) config.temperature = req.temperature;
    // Standard is the default: sent only when asked for another tier, so a plain call stays a plain call.
    if (req.tier && req.tier !== 'standard') config.serviceTier = SDK_TIERS[req.tier];
    const params = { model: req.model, contents: req.prompt, config };

    let text = '';
    let last: GenerateContentResponse | undefined;
    let usageSeen: GenerateContentResponse['usageMetadata'];
    let end: AnswerEnd = { candidates: 0 };
    let callbackFailed = false;
    let finished = false;
    /**
     * The caller's onText threw (its consumer went away): its error propagates as it is (its class and code are the
     * caller's to decide on), but the chunks read so far reported usage, as a cut stream's do, and Gemini bills it:
     * the last chunk's, once, rides on the error as `billed` for the attempt's row. An error that cannot carry it (a
     * primitive, a frozen object) is passed on as it is, and the log says that usage goes unrecorded.
     */
    const callerFailure = (err: unknown): unknown => {
      if (!usageSeen) return err;
      const billed = billedCall(billOf(pricing, req, usageSeen, last));
      if (!carryBilled(err, billed)) log?.warn({ model: req.model, costUsd: billed.costUsd }, "llm: onText threw an error that cannot carry what the call was billed; that usage is not recorded");
      return err;
    };
    try {
      if (req.onText) {
        const stream = await ai.models.generateContentStream(params);
        for await (const chunk of stream) {
          last = chunk;
          usageSeen = chunk.usageMetadata ?? usageSeen;
          end = answerEndOf(chunk, end);
          const piece = textOf(chunk);
          if (!piece) continue;
          text += piece;
          try {
            await req.onText(piece);
          } catch (err) {
            callbackFailed = true;
            throw err;
          }
        }
      } else {
        last = await ai.models.generateContent(params);
        usageSeen = last.usageMetadata;
        end = answerEndOf(last);
        text = textOf(last);
      }
      finished = true;
    } catch (err) {
      if (callbackFailed) throw callerFailure(err);
      const e = d.fail(err, what);
      e.model ??= req.model;
      // A stream cut after chunks that carried usage (Gemini puts the prompt's on every one, and 2.5 a running count of
      // the text so far; the last chunk's is the call's, so the last seen is what it reported, never a sum): the model
      // read the prompt (and wrote that text) and Gemini bills it, so the error carries it as a refusal's does, for the
      // attempt's row and the TPM buckets.
      if (usageSeen) carryBilled(e, billedCall(billOf(pricing, req, usageSeen, last)));
      // A caller's cancellation is routine (shutdown, job cancel), not worth a warning.
      log?.[e.code === 'EABORTED' ? 'debug' : 'warn']({ model: req.model, code: e.code, status: e.status, ms: Math.round(performance.now() - started) }, 'llm call failed');
      throw e;
    } finally {
      d.end(finished);
    }

    const result: GenerateResult = { text, ...billOf(pricing, req, usageSeen, last) };
    const { usage, tier } = result;
    // From here on the model answered: whatever goes wrong, its tokens were billed.
    const billed = billedCall(result);
    // A stream that ended without a finishReason was cut short, though cleanly at the HTTP level (a proxy or the
    // backend closing early): the text is partial, and the usage the last chunk carried is what it is billed: the
    // prompt's, and the text so far (a 2.5 model's chunks count it as they go, 2.0's not before the last). A plain
    // answer without one is as incomplete, whatever its text. Either is no answer (see unfinishedOf).
    const ended = req.onText ? 'the stream ended' : 'the answer came';
    const unfinished = unfinishedOf(end, !!usageSeen, `${what}: ${ended} without a finishReason after ${text.length} chars (an incomplete answer)`, { model: req.model, billed });
    if (unfinished) {
      log?.warn({ model: req.model, chars: text.length, stream: !!req.onText, ms: Math.round(performance.now() - started) }, 'llm answer ended without a finishReason');
      throw unfinished;
    }
    // A stream's text already reached the caller: the refusal says how much (never what), for the failed reason.
    const refused = refusalOf(end, what, { model: req.model, billed, ...(req.onText ? { streamedChars: text.length } : {}) });
    if (refused) throw refused;
    if (req.responseJsonSchema !== undefined) {
      try {
        result.json = JSON.parse(text);
      } catch (err) {
        const finish = end.finishReason;
        throw new LlmError('EBADOUTPUT', `${what} returned text that is not JSON (finishReason ${finish ?? 'none'}, ${text.length} chars)`, { model: req.model, billed, ...(finish ? { finishReason: finish } : {}), cause: err });
      }
    }
    if (tier !== (req.tier ?? 'standard')) log?.info({ model: req.model, asked: req.tier, servedAt: tier }, 'llm call served at another tier than asked');
    log?.debug({ model: req.model, input: usage.input, output: usage.output, costUsd: result.costUsd, stream: !!req.onText, ms: Math.round(performance.now() - started) }, 'llm call done');
    return result;
  }

  async function embed(texts: string[], eopts: EmbedOptions = {}): Promise<number[][]> {
    const model = eopts.model ?? embeddingModel;
    const what = `Gemini ${model} embed`;
    if (eopts.signal?.aborted) throw callerAbort(eopts.signal, what);
    const out: number[][] = [];
    for (let i = 0; i < texts.length; i += EMBED_BATCH) {
      const batch = texts.slice(i, i + EMBED_BATCH);
      for (const v of await embedBatch(batch, model, what, eopts)) out.push(v);
    }
    return out;
  }

  /**
   * One embedContent request, as one GenAI-convention CLIENT span, a child of whatever span is active (a job
   * attempt's, an API request's; a root span for the ingest CLI). Tracing unset, the span is the API's no-op.
   */
  function embedBatch(batch: string[], model: string, what: string, eopts: EmbedOptions): Promise<number[][]> {
    const estimatedInputTokens = batch.reduce((sum, text) => sum + estimateTextTokens(text), 0);
    const attributes = embeddingCallAttributes({ model, texts: batch.length, dims: embeddingDims, estimatedInputTokens, ...(eopts.taskType ? { taskType: eopts.taskType } : {}) });
    return inSpan(embeddingCallName(model), { kind: SpanKind.CLIENT, attributes }, async () => {
      const d = deadline(opts.timeoutMs, eopts.signal);
      let vectors: Array<number[] | undefined>;
      let finished = false;
      try {
        const res = await ai.models.embedContent({
          model,
          contents: batch,
          config: { outputDimensionality: embeddingDims, abortSignal: d.signal, ...(eopts.taskType ? { taskType: eopts.taskType } : {}) },
        });
        vectors = (res.embeddings ?? []).map((e) => e.values);
        finished = true;
      } catch (err) {
        const e = d.fail(err, what);
        // A 429 here is the embedding model's quota: the delay it causes names that model, not the job's.
        e.model ??= model;
        log?.warn({ model, code: e.code, status: e.status, texts: batch.length }, 'embed call failed');
        throw e;
      } finally {
        d.end(finished);
      }
      if (vectors.length !== batch.length || vectors.some((v) => !v || v.length !== embeddingDims)) {
        throw new LlmError('EBADOUTPUT', `${what} returned ${vectors.length} vectors for ${batch.length} texts (want ${embeddingDims} dims each)`);
      }
      // Gemini normalises only full-size (3072) vectors; truncated ones must be normalised by the caller.
      return vectors.map((v) => unitLength(v as number[]));
    });
  }

  return { generate, embed, embeddingModel, embeddingDims };
}
