import type { BilledCall } from '../../core/types.js';

export type LlmErrorCode = 'ERATELIMIT' | 'EQUOTAEXHAUSTED' | 'ETIMEDOUT' | 'EPROVIDER' | 'ENETWORK' | 'EBADREQUEST' | 'EBADOUTPUT' | 'EBLOCKED' | 'EABORTED';

/** Every failure of an LLM call, classified once so retry, breaker and backoff logic read one shape. */
export class LlmError extends Error {
  override name = 'LlmError';
  readonly code: LlmErrorCode;
  readonly retryable: boolean;
  readonly status?: number;
  readonly retryAfterMs?: number;
  /** EQUOTAEXHAUSTED: when the violated per-day quota resets (epoch ms): now + RetryInfo's delay, else midnight Pacific. */
  readonly retryAtMs?: number;
  /** 429s: the quota Gemini named in `google.rpc.QuotaFailure` (e.g. GenerateRequestsPerDayPerProjectPerModel). */
  readonly quotaId?: string;
  /** The model the failed call asked for (set by the client), so a 429 can pause that model's lanes. */
  model?: string;
  /** The model answered before this error (bad output, a refusal, a stream cut after some chunks): what that answer was billed. */
  readonly billed?: BilledCall;
  /** The candidate's `finishReason` (Gemini's FinishReason enum) when it explains the error: EBLOCKED, EBADOUTPUT. */
  readonly finishReason?: string;
  /** EBLOCKED for the prompt itself: `promptFeedback.blockReason`. */
  readonly blockReason?: string;
  /** EBLOCKED: the harm categories whose safety rating says `blocked: true` (the prompt's or the candidate's). */
  readonly blockedCategories?: readonly string[];
  /** EBLOCKED: the candidate's `finishMessage`, Gemini's own words on why it stopped (never the prompt's text). */
  readonly finishMessage?: string;
  /** EBLOCKED of a stream: how many characters of text its onText had already been handed before the stop (never the text). */
  readonly streamedChars?: number;

  constructor(
    code: LlmErrorCode,
    message: string,
    opts: { retryable?: boolean; status?: number; retryAfterMs?: number; retryAtMs?: number; quotaId?: string; model?: string; billed?: BilledCall; finishReason?: string; blockReason?: string; blockedCategories?: readonly string[]; finishMessage?: string; streamedChars?: number; cause?: unknown } = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.code = code;
    this.retryable = opts.retryable ?? DEFAULT_RETRYABLE[code];
    if (opts.status !== undefined) this.status = opts.status;
    if (opts.retryAfterMs !== undefined) this.retryAfterMs = opts.retryAfterMs;
    if (opts.retryAtMs !== undefined) this.retryAtMs = opts.retryAtMs;
    if (opts.quotaId !== undefined) this.quotaId = opts.quotaId;
    if (opts.model !== undefined) this.model = opts.model;
    if (opts.billed !== undefined) this.billed = opts.billed;
    if (opts.finishReason !== undefined) this.finishReason = opts.finishReason;
    if (opts.blockReason !== undefined) this.blockReason = opts.blockReason;
    if (opts.blockedCategories !== undefined) this.blockedCategories = opts.blockedCategories;
    if (opts.finishMessage !== undefined) this.finishMessage = opts.finishMessage;
    if (opts.streamedChars !== undefined) this.streamedChars = opts.streamedChars;
  }
}

const DEFAULT_RETRYABLE: Record<LlmErrorCode, boolean> = {
  ERATELIMIT: true,
  EQUOTAEXHAUSTED: true,
  ETIMEDOUT: true,
  EPROVIDER: true,
  ENETWORK: true,
  EBADREQUEST: false,
  EBADOUTPUT: true,
  // The model (or its safety filters) refused this prompt: it would refuse it again, each try billed.
  EBLOCKED: false,
  EABORTED: false,
};

const NETWORK_CODES = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'EPIPE',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENETDOWN',
  'UND_ERR_SOCKET',
  'UND_ERR_CLOSED',
  'UND_ERR_DESTROYED',
]);
const TIMEOUT_CODES = new Set(['ETIMEDOUT', 'ESOCKETTIMEDOUT', 'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT']);

/** google.protobuf.Duration as JSON ("3s", "1.5s") to milliseconds. */
export function parseDuration(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)s\s*$/.exec(text);
  return m ? Math.round(Number(m[1]) * 1000) : undefined;
}

interface RpcStatus {
  code?: number;
  status?: string;
  message?: string;
  details?: Array<{ '@type'?: string; retryDelay?: string; violations?: Array<{ quotaId?: string; quotaMetric?: string }> }>;
}

/**
 * Gemini's per-day quotas (requests per day) reset at midnight Pacific time. The next such midnight
 * after `now`, found by reading the Pacific wall clock (so daylight saving time is handled by Intl).
 */
export function nextPacificMidnight(now = Date.now()): number {
  const parts = new Intl.DateTimeFormat('en-US', { timeZone: 'America/Los_Angeles', hourCycle: 'h23', hour: 'numeric', minute: 'numeric', second: 'numeric' }).formatToParts(now);
  const get = (t: string) => Number(parts.find((p) => p.type === t)?.value ?? 0);
  const sinceMidnightMs = ((get('hour') * 60 + get('minute')) * 60 + get('second')) * 1000 + (now % 1000);
  // A day is 23 or 25 hours on a DST switch; re-read the wall clock there and correct by the difference.
  let at = now - sinceMidnightMs + 24 * 3600_000;
  const check = new Intl.DateTimeFormat('en-US', { timeZone: 'America/Los_Angeles', hourCycle: 'h23', hour: 'numeric' }).format(at);
  const h = Number(check);
  if (h !== 0) at -= (h > 12 ? h - 24 : h) * 3600_000;
  return at;
}

/**
 * What a 429's QuotaFailure says: a per-day quota (waits for the daily reset, or another model) or a
 * short-window one (per minute: waits `retryDelay`). A body naming both is per-day: the fallback serves
 * at once instead of the job waiting on a model whose daily quota is spent.
 */
function quotaOf(rpc: RpcStatus | undefined): { perDay: boolean; quotaId?: string } {
  const violations = (rpc?.details ?? []).filter((d) => String(d['@type']).endsWith('google.rpc.QuotaFailure')).flatMap((d) => d.violations ?? []);
  const day = violations.find((v) => /PerDay/i.test(v.quotaId ?? ''));
  if (day) return { perDay: true, quotaId: day.quotaId };
  return { perDay: false, quotaId: violations[0]?.quotaId };
}

/** The SDK's ApiError message is the JSON error body; pull google.rpc.Status out of it when it parses. */
function rpcStatusOf(message: string): RpcStatus | undefined {
  const start = message.indexOf('{');
  if (start < 0) return undefined;
  try {
    const body = JSON.parse(message.slice(start)) as { error?: RpcStatus } | RpcStatus[];
    const first = Array.isArray(body) ? (body[0] as { error?: RpcStatus }) : body;
    return first?.error;
  } catch {
    return undefined;
  }
}

function causeChain(err: unknown): Array<Record<string, unknown>> {
  const out: Array<Record<string, unknown>> = [];
  let cur: unknown = err;
  while (cur && typeof cur === 'object' && out.length < 8) {
    out.push(cur as Record<string, unknown>);
    cur = (cur as { cause?: unknown }).cause;
  }
  return out;
}

const brief = (err: Record<string, unknown>): string => String(err.message ?? err.name ?? 'unknown error').slice(0, 500);

/**
 * Classifies what the @google/genai SDK (or fetch/undici underneath it) threw. 429, 5xx, timeouts and
 * network failures are retryable; other 4xx are not; an abort is EABORTED and not retryable (the
 * caller decided), unless the abort was a timeout (`TimeoutError`).
 */
export function toLlmError(err: unknown): LlmError {
  if (err instanceof LlmError) return err;
  const chain = causeChain(err);
  const top = chain[0] ?? { message: String(err) };
  const status = typeof top.status === 'number' ? top.status : typeof top.code === 'number' ? top.code : undefined;

  if (top.name === 'ApiError' || (status !== undefined && status >= 400 && status < 600)) {
    const s = status ?? 500;
    const rpc = rpcStatusOf(String(top.message ?? ''));
    const message = `Gemini API ${s}${rpc?.status ? ` ${rpc.status}` : ''}: ${rpc?.message ?? brief(top)}`.slice(0, 500);
    if (s === 429) {
      // RetryInfo in the body is the delay's one source: the SDK's ApiError carries the status and the body only,
      // never the response's headers (its Retry-After included; @google/genai 2.32, checked in llm-client.test.ts).
      const delay = rpc?.details?.find((d) => String(d['@type']).endsWith('google.rpc.RetryInfo'))?.retryDelay;
      const retryAfterMs = delay ? parseDuration(delay) : undefined;
      const quota = quotaOf(rpc);
      // The reset: RetryInfo's delay when Gemini gives one, else the daily reset at midnight Pacific.
      const retryAtMs = retryAfterMs !== undefined ? Date.now() + retryAfterMs : nextPacificMidnight();
      if (quota.perDay) return new LlmError('EQUOTAEXHAUSTED', message, { status: s, retryAfterMs, retryAtMs, quotaId: quota.quotaId, cause: err });
      return new LlmError('ERATELIMIT', message, { status: s, retryAfterMs, quotaId: quota.quotaId, cause: err });
    }
    if (s === 408 || s === 504) return new LlmError('ETIMEDOUT', message, { status: s, cause: err });
    if (s >= 500 || s === 499) return new LlmError('EPROVIDER', message, { status: s, cause: err });
    return new LlmError('EBADREQUEST', message, { status: s, cause: err });
  }

  for (const e of chain) {
    if (e.name === 'TimeoutError') return new LlmError('ETIMEDOUT', `Gemini call timed out: ${brief(e)}`, { cause: err });
    if (e.name === 'AbortError') return new LlmError('EABORTED', 'Gemini call aborted by the caller', { cause: err });
  }
  for (const e of chain) {
    const code = typeof e.code === 'string' ? e.code : undefined;
    if (code && TIMEOUT_CODES.has(code)) return new LlmError('ETIMEDOUT', `Gemini call timed out (${code}): ${brief(e)}`, { cause: err });
    if (code && NETWORK_CODES.has(code)) return new LlmError('ENETWORK', `network error talking to Gemini (${code}): ${brief(e)}`, { cause: err });
  }
  const msg = brief(top);
  if (top.name === 'TypeError' && /fetch failed|terminated|network|socket/i.test(msg)) {
    return new LlmError('ENETWORK', `network error talking to Gemini: ${msg}`, { cause: err });
  }
  // A cut-off stream or body that does not parse: the provider's fault, worth another try.
  if (top.name === 'SyntaxError' || /Incomplete JSON segment|exception parsing stream chunk|Response body is empty/.test(msg)) {
    return new LlmError('EPROVIDER', `malformed response from Gemini: ${msg}`, { cause: err });
  }
  // Anything else is most likely a request the SDK refused to build: retrying would fail the same way.
  return new LlmError('EPROVIDER', `Gemini call failed: ${msg}`, { retryable: false, cause: err });
}

/** google.rpc.Code names, by number. */
const GRPC_CODES = ['OK', 'CANCELLED', 'UNKNOWN', 'INVALID_ARGUMENT', 'DEADLINE_EXCEEDED', 'NOT_FOUND', 'ALREADY_EXISTS', 'PERMISSION_DENIED', 'RESOURCE_EXHAUSTED', 'FAILED_PRECONDITION', 'ABORTED', 'OUT_OF_RANGE', 'UNIMPLEMENTED', 'INTERNAL', 'UNAVAILABLE', 'DATA_LOSS', 'UNAUTHENTICATED'];
/** The gRPC codes that say the request itself is wrong: sent again it fails again. */
const GRPC_REFUSED = new Set([3, 5, 7, 9, 11, 12, 16]);
/** Their HTTP equivalents (google.rpc.Code's mapping), so an error's `status` reads the same either way. */
const GRPC_HTTP: Record<number, number> = { 1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429, 9: 400, 10: 409, 11: 400, 12: 501, 13: 500, 14: 503, 15: 500, 16: 401 };

/**
 * One inline request a batch answered with an error. Gemini sends it as a google.rpc.Status, whose `code` is a
 * gRPC code (3 INVALID_ARGUMENT, 8 RESOURCE_EXHAUSTED, 13 INTERNAL...), not an HTTP status; an HTTP-like code
 * (400-599) is read as one too. A request Gemini refused fails like a refused call (EBADREQUEST); anything
 * else (quota, internal, unavailable, unknown) is retried, on the standard tier.
 */
export function batchRequestError(model: string, e: { code?: number; message?: string }): LlmError {
  const code = e.code ?? 13;
  const grpc = Number.isInteger(code) && code >= 0 && code < GRPC_CODES.length;
  const status = grpc ? GRPC_HTTP[code] : code;
  const refused = grpc ? GRPC_REFUSED.has(code) : code >= 400 && code < 500 && code !== 429;
  const message = `Gemini ${model} batch request failed (${grpc ? `${code} ${GRPC_CODES[code]}` : code}): ${e.message ?? 'no message'}`;
  return new LlmError(refused ? 'EBADREQUEST' : 'EPROVIDER', message, status === undefined ? { model } : { model, status });
}
