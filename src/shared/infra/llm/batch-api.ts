import { GoogleGenAI, type Fetch, type GenerateContentResponse, type InlinedRequest } from '@google/genai';
import type { Logger } from '../../core/logger.js';
import type { BilledCall } from '../../core/types.js';
import { LlmError } from './llm-errors.js';
import { answerEndOf, refusalOf, unfinishedOf } from './answer-end.js';
import { billedCall, sdkOptions, textOf, usageOf, withoutMetaSchema, type GenerateResult } from './llm-client.js';
import { createPricing, type Pricing } from './pricing.js';

/** One inline response of a finished batch, matched to its job through the request's metadata. */
export interface BatchResponse {
  jobId?: string;
  response?: GenerateContentResponse;
  error?: { code?: number; message?: string };
}

export interface BatchInfo {
  name: string;
  displayName?: string;
  /** The SDK's JobState: JOB_STATE_PENDING, _RUNNING, _SUCCEEDED, _FAILED, _CANCELLED, _EXPIRED. */
  state: string;
  responses?: BatchResponse[];
}

/** Gemini Batch Mode through `ai.batches` (inline requests and responses). */
export interface BatchApi {
  /** Not idempotent (Gemini makes a new batch per call): the caller records its intent first. */
  create(model: string, displayName: string, requests: InlinedRequest[]): Promise<BatchInfo>;
  get(name: string): Promise<BatchInfo>;
  /** The batch created with this displayName no earlier than `sinceMs` (an hour of clock skew allowed), if any. */
  findByDisplayName(displayName: string, sinceMs: number): Promise<BatchInfo | undefined>;
  cancel(name: string): Promise<void>;
  /** One inline response as a model call's result, billed at the batch tier. */
  resultOf(model: string, response: GenerateContentResponse, json: boolean): GenerateResult;
  /** What one inline response was billed (its usageMetadata at the batch tier); none when it reports no usage. */
  billOf(model: string, response: GenerateContentResponse): BilledCall | undefined;
}

/** The job's model call as an inline request, with the job id as metadata for correlation. */
export function inlinedRequestOf(req: { system?: string; prompt: string; responseJsonSchema?: unknown }, jobId: string): InlinedRequest {
  return {
    contents: [{ role: 'user', parts: [{ text: req.prompt }] }],
    metadata: { jobId },
    config: {
      ...(req.system ? { systemInstruction: req.system } : {}),
      ...(req.responseJsonSchema !== undefined ? { responseMimeType: 'application/json', responseJsonSchema: withoutMetaSchema(req.responseJsonSchema) } : {}),
    },
  };
}

const SKEW_MS = 3600_000;
const LIST_PAGE_SIZE = 100;
/** How many batches a search by displayName reads at most (50 pages): past it the search gives up, and says so. */
const LIST_LIMIT = 5000;

/** Its own SDK client, on the same key and endpoint as the LLM client's. */
export function createBatchApi(opts: { apiKey: string; baseUrl?: string; pricing?: Pricing; fetch?: Fetch; logger?: Logger; listLimit?: number }): BatchApi {
  const ai = new GoogleGenAI(sdkOptions(opts));
  const log = opts.logger?.child({ component: 'batch-api' });
  const listLimit = opts.listLimit ?? LIST_LIMIT;
  const pricing = opts.pricing ?? createPricing();
  const info = (b: { name?: string; displayName?: string; state?: string; dest?: { inlinedResponses?: Array<{ response?: GenerateContentResponse; metadata?: Record<string, string>; error?: { code?: number; message?: string } }> } }): BatchInfo => ({
    name: b.name ?? '',
    state: String(b.state ?? 'JOB_STATE_UNSPECIFIED'),
    ...(b.displayName ? { displayName: b.displayName } : {}),
    ...(b.dest?.inlinedResponses
      ? { responses: b.dest.inlinedResponses.map((r) => ({ jobId: r.metadata?.jobId, ...(r.response ? { response: r.response } : {}), ...(r.error ? { error: r.error } : {}) })) }
      : {}),
  });
  return {
    async create(model, displayName, requests) {
      return info(await ai.batches.create({ model, src: requests, config: { displayName } }));
    },
    async get(name) {
      return info(await ai.batches.get({ name }));
    },
    async findByDisplayName(displayName, sinceMs) {
      // Gemini documents no order for batches.list: stopping at the first batch older than the intent (as if
      // newest came first) could miss the batch and make the caller create a second one, every job billed twice.
      // So every page is read, up to a bound; a batch older than the intent (less an hour of skew) is skipped.
      const pager = await ai.batches.list({ config: { pageSize: LIST_PAGE_SIZE } });
      let seen = 0;
      for await (const b of pager) {
        if (b.displayName === displayName && !(b.createTime && Date.parse(b.createTime) < sinceMs - SKEW_MS)) return info(b);
        if (++seen >= listLimit) {
          log?.warn({ displayName, listed: seen }, 'batch search by displayName stopped at its limit without finding it: a batch may be created twice');
          return undefined;
        }
      }
      return undefined;
    },
    async cancel(name) {
      await ai.batches.cancel({ name });
    },
    billOf(model, response) {
      if (!response.usageMetadata) return undefined;
      const usage = usageOf(response.usageMetadata);
      const cost = pricing.cost(model, usage, 'batch');
      return { model, usage, costUsd: cost.costUsd, standardCostUsd: cost.standardCostUsd, tier: 'batch' };
    },
    resultOf(model, response, json) {
      const text = textOf(response);
      const usage = usageOf(response.usageMetadata);
      const cost = pricing.cost(model, usage, 'batch');
      const result: GenerateResult = { text, usage, model, costUsd: cost.costUsd, standardCostUsd: cost.standardCostUsd, tier: 'batch' };
      const billed = billedCall(result);
      const end = answerEndOf(response);
      const what = `Gemini ${model} batch answer`;
      // As a model call's answer reads (llm-client): one without a finishReason is no answer, a retryable
      // EPROVIDER billed at the batch price; the job's retry then runs standard (batch-tier.ts, readBy).
      const unfinished = unfinishedOf(end, !!response.usageMetadata, `${what}: the answer came without a finishReason after ${text.length} chars (an incomplete answer)`, { model, billed });
      if (unfinished) throw unfinished;
      const refused = refusalOf(end, what, { model, billed });
      if (refused) throw refused;
      if (json) {
        try {
          result.json = JSON.parse(text);
        } catch (err) {
          throw new LlmError('EBADOUTPUT', `Gemini ${model} batch answer is not JSON (${text.length} chars)`, { model, billed, cause: err });
        }
      }
      return result;
    },
  };
}
