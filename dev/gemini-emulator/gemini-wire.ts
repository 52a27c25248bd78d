/** The slice of Gemini's REST JSON the emulator reads and writes (field names as on the wire). */
export interface WirePart {
  text?: string;
  thought?: boolean;
  inlineData?: unknown;
  fileData?: unknown;
  [k: string]: unknown;
}

export interface WireContent {
  role?: string;
  parts?: WirePart[];
}

export interface WireGenerationConfig {
  responseMimeType?: string;
  responseSchema?: unknown;
  responseJsonSchema?: unknown;
  _responseJsonSchema?: unknown;
  maxOutputTokens?: number;
  [k: string]: unknown;
}

export interface WireGenerateRequest {
  contents?: WireContent[];
  systemInstruction?: WireContent;
  generationConfig?: WireGenerationConfig;
  /** Top-level on the wire (the SDK lifts `config.serviceTier` out of the generation config). */
  serviceTier?: string;
}

export interface WireEmbedRequest {
  content?: WireContent;
  taskType?: string;
  outputDimensionality?: number;
  model?: string;
}

export interface WireUsage {
  promptTokenCount: number;
  candidatesTokenCount: number;
  totalTokenCount: number;
  promptTokensDetails: Array<{ modality: 'TEXT'; tokenCount: number }>;
  candidatesTokensDetails: Array<{ modality: 'TEXT'; tokenCount: number }>;
  /** Prompt tokens served from the implicit cache (billed at the cached-input price). */
  cachedContentTokenCount?: number;
  cacheTokensDetails?: Array<{ modality: 'TEXT'; tokenCount: number }>;
  /** Thinking tokens (billed at the output price); counted in totalTokenCount, not in candidatesTokenCount. */
  thoughtsTokenCount?: number;
  serviceTier?: string;
}

const STATUS_NAMES: Record<number, string> = {
  400: 'INVALID_ARGUMENT',
  401: 'UNAUTHENTICATED',
  403: 'PERMISSION_DENIED',
  404: 'NOT_FOUND',
  409: 'ABORTED',
  429: 'RESOURCE_EXHAUSTED',
  499: 'CANCELLED',
  500: 'INTERNAL',
  501: 'NOT_IMPLEMENTED',
  503: 'UNAVAILABLE',
  504: 'DEADLINE_EXCEEDED',
};

const DEFAULT_MESSAGES: Record<number, string> = {
  429: 'You exceeded your current quota, please check your plan and billing details.',
  500: 'An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting',
  503: 'The model is overloaded. Please try again later.',
  504: 'Deadline expired before operation could complete.',
};

/** Which Gemini quota a scripted 429 names: requests per minute, input tokens per minute, or requests per day. */
export type QuotaScope = 'per_minute' | 'tokens_per_minute' | 'per_day';

/** The quota ids and metrics Gemini puts in `google.rpc.QuotaFailure` (paid tier names; free tier adds `-FreeTier`). */
const QUOTAS: Record<QuotaScope, { quotaMetric: string; quotaId: string; quotaValue: string }> = {
  per_minute: { quotaMetric: 'generativelanguage.googleapis.com/generate_content_paid_tier_requests', quotaId: 'GenerateRequestsPerMinutePerProjectPerModel', quotaValue: '1000' },
  tokens_per_minute: { quotaMetric: 'generativelanguage.googleapis.com/generate_content_paid_tier_input_token_count', quotaId: 'GenerateContentPaidTierInputTokensPerModelPerMinute', quotaValue: '1000000' },
  per_day: { quotaMetric: 'generativelanguage.googleapis.com/generate_content_paid_tier_requests', quotaId: 'GenerateRequestsPerDayPerProjectPerModel', quotaValue: '10000' },
};

/**
 * Google's error envelope (`google.rpc.Status`), the shape the SDK turns into `ApiError`. A 429 carries
 * what Gemini sends: `QuotaFailure` (the violated quota), `Help`, then `RetryInfo` when a delay is known.
 */
export function errorPayload(code: number, message?: string, opts: { retryAfterS?: number; model?: string; quota?: QuotaScope } = {}) {
  const status = STATUS_NAMES[code] ?? (code >= 500 ? 'INTERNAL' : 'FAILED_PRECONDITION');
  const details: unknown[] = [];
  if (code === 429) {
    const q = QUOTAS[opts.quota ?? 'per_minute'];
    details.push({
      '@type': 'type.googleapis.com/google.rpc.QuotaFailure',
      violations: [{ quotaMetric: q.quotaMetric, quotaId: q.quotaId, quotaDimensions: { location: 'global', model: opts.model ?? 'unknown' }, quotaValue: q.quotaValue }],
    });
    details.push({
      '@type': 'type.googleapis.com/google.rpc.Help',
      links: [{ description: 'Learn more about Gemini API quotas', url: 'https://ai.google.dev/gemini-api/docs/rate-limits' }],
    });
    if (opts.retryAfterS !== undefined) {
      details.push({ '@type': 'type.googleapis.com/google.rpc.RetryInfo', retryDelay: `${opts.retryAfterS}s` });
    }
  }
  return {
    error: {
      code,
      message: message ?? DEFAULT_MESSAGES[code] ?? `Request failed with status ${status}.`,
      status,
      ...(details.length > 0 ? { details } : {}),
    },
  };
}
