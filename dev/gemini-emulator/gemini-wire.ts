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

/** Google's error envelope (`google.rpc.Status`), the shape the SDK turns into `ApiError`. */
export function errorPayload(code: number, message?: string, opts: { retryAfterS?: number; model?: string } = {}) {
  const status = STATUS_NAMES[code] ?? (code >= 500 ? 'INTERNAL' : 'FAILED_PRECONDITION');
  const details: unknown[] = [];
  if (code === 429) {
    details.push({
      '@type': 'type.googleapis.com/google.rpc.QuotaFailure',
      violations: [
        {
          quotaMetric: 'generativelanguage.googleapis.com/generate_content_requests',
          quotaId: 'GenerateRequestsPerMinutePerProjectPerModel',
          quotaDimensions: { location: 'global', model: opts.model ?? 'unknown' },
        },
      ],
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
