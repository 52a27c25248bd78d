import { backoffDelay } from './backoff.js';
import { CANCELLED_REASON } from './cancel.js';
import { EDBUNAVAILABLE } from './errors.js';
import type { BilledCall } from './types.js';

/**
 * The fate of a failed attempt, decided in one place from stable error codes (never from message text):
 * retry with BullMQ's backoff (no sooner than `retryAfterMs`), delay without using an attempt, or fail
 * for good. The code is what the DLQ class, the replay decision and the metric label are derived from.
 */
export type Outcome =
  | { kind: 'retry'; code: string; retryAfterMs?: number }
  | { kind: 'delay'; reason: DelayReason; delayMs: number; model?: string }
  | { kind: 'fail'; code: string };

/**
 * `provider_rate_limited`: Gemini answered 429 for a short-window quota (per minute); `provider_quota`: a
 * per-day quota, waited out until its reset. Both pause the model's lanes for every org, like an open breaker.
 * `database_unavailable`: Postgres did not answer (EDBUNAVAILABLE) on the attempt's path (its knowledge search):
 * the job waits out the outage, longer at each deferral in a row (databaseDelayMs); no model pauses.
 */
export const DELAY_REASONS = ['rate_limited', 'breaker_open', 'quota', 'provider_rate_limited', 'provider_quota', 'waiting_for_batch', 'database_unavailable'] as const;
export type DelayReason = (typeof DELAY_REASONS)[number];

/** Reasons that say the model itself cannot serve anyone now: the dispatcher blocks its lanes until then. */
export const MODEL_WIDE_DELAYS: ReadonlySet<DelayReason> = new Set<DelayReason>(['breaker_open', 'provider_rate_limited', 'provider_quota']);

/**
 * A job deferred for an unavailable database waits this long at its first deferral, twice as long at each next one
 * in a row, at most DB_UNAVAILABLE_MAX_DELAY_MS (the defaults of DB_UNAVAILABLE_DELAY_MS and its max).
 */
export const DB_UNAVAILABLE_DELAY_MS = 2000;
export const DB_UNAVAILABLE_MAX_DELAY_MS = 60_000;

/**
 * The wait of a job's `deferral`-th deferral in a row (1-based) for an unavailable database: exponential, capped,
 * with the retries' equal jitter (backoff.ts), so the jobs an outage deferred together come back spread out rather
 * than all at once on a database just back.
 */
export function databaseDelayMs(deferral: number, opts: { firstMs: number; maxMs: number } = { firstMs: DB_UNAVAILABLE_DELAY_MS, maxMs: DB_UNAVAILABLE_MAX_DELAY_MS }, random = Math.random): number {
  return backoffDelay(deferral, { baseMs: opts.firstMs, maxMs: opts.maxMs }, random);
}

/** A provider 429 without RetryInfo or Retry-After still waits, this long, instead of hammering the model. */
export const PROVIDER_429_DEFAULT_DELAY_MS = 10_000;
/** Codes the LLM client gives a provider 429: per minute (ERATELIMIT) and per day (EQUOTAEXHAUSTED). */
export const ERATELIMIT = 'ERATELIMIT';
export const EQUOTAEXHAUSTED = 'EQUOTAEXHAUSTED';

/** The job was cancelled while it ran. */
export const ECANCELLED = 'ECANCELLED';
/** BullMQ's stalled-job check gave up on the job (its process died or hung too many times). */
export const ESTALLED = 'ESTALLED';
/**
 * The model answered, but not JSON or not the action's output schema: retried, yet the provider is up. An answer
 * cut at MAX_TOKENS is one too (its `finishReason` says so): another sample may end in time.
 */
export const EBADOUTPUT = 'EBADOUTPUT';
/**
 * The model or its filters refused this prompt (`promptFeedback.blockReason`, a candidate stopped for SAFETY,
 * PROHIBITED_CONTENT, RECITATION, BLOCKLIST, SPII..., or no candidate): it would refuse it again, so the job fails
 * at once (each try is billed); the provider is up. The reason rides on the error as `finishReason` / `blockReason`,
 * with `blockedCategories` and `finishMessage`, and `streamedChars` when a stream's caller already had some text;
 * its message (the failed reason, the DLQ entry's) names them.
 */
export const EBLOCKED = 'EBLOCKED';

/**
 * Codes of failures that say nothing about the provider's health, so they never count against its circuit
 * breaker: one prompt that keeps drawing malformed answers must not shut a model off for every tenant.
 * A delay (EDELAYED) thrown at the call itself (a batch-tier job waiting for its batch) called nothing, and
 * neither did a Postgres outage (EDBUNAVAILABLE) met on the way to it.
 * Transport errors, timeouts, 5xx and 429 (ENETWORK, ETIMEDOUT, EPROVIDER, ERATELIMIT) do count.
 */
const NOT_PROVIDER_FAILURES = new Set([EBADOUTPUT, EBLOCKED, 'EDELAYED', EDBUNAVAILABLE]);

export function isProviderHealthNeutral(err: unknown): boolean {
  return NOT_PROVIDER_FAILURES.has(codeOf(err));
}

/** A failure that carried no code (a bug, or an error from a library nothing wrapped). */
export const EUNKNOWN = 'EUNKNOWN';

/**
 * Codes that can never succeed on another attempt, for errors that do not say `retryable` themselves
 * (ValidationError, for one). An explicit `retryable` flag on the error wins over this set.
 */
const FAIL_CODES = new Set(['EVALIDATION', ECANCELLED, 'EBADREQUEST', EBLOCKED, 'EABORTED']);

/** Fail the job now, whatever attempts it has left. */
export class NonRetriableError extends Error {
  readonly retryable = false;
  constructor(
    readonly code: string,
    message: string,
    opts: { cause?: unknown } = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = new.target.name;
  }
}

/** Retry the job (using an attempt), but not before `retryAfterMs` (a floor under BullMQ's backoff). */
export class RetryAfterError extends Error {
  readonly retryable = true;
  constructor(
    readonly code: string,
    message: string,
    readonly retryAfterMs: number,
    opts: { cause?: unknown } = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = new.target.name;
  }
}

/**
 * Thrown by a guard that wants the job to wait without using an attempt (empty bucket, open breaker).
 * The processor turns it into `job.moveToDelayed` + BullMQ's `DelayedError`.
 */
export class DelayJobError extends Error {
  override name = 'DelayJobError';
  readonly code = 'EDELAYED';
  constructor(
    readonly delayMs: number,
    readonly reason: DelayReason,
  ) {
    super(`job delayed ${delayMs} ms: ${reason}`);
  }
}

/**
 * BullMQ's stalled-job check fails a job with this exact reason (moveStalledJobsToWait Lua script of
 * bullmq 6.x). bullmq does not export it, so it is matched here and nowhere else.
 */
export const BULLMQ_STALLED_REASON = 'job stalled more than allowable limit';

/** `[ECODE] message`: the code rides at the front of the failed reason BullMQ stores for the job. */
const CODED_REASON = /^\[(E[A-Z0-9_]*)\] /;
const CODE_SHAPE = /^E[A-Z0-9_]*$/;

/**
 * The message handed to BullMQ for a failed attempt. BullMQ keeps only the message (`failedReason`), so
 * the code is its fixed prefix and any process can read it back with `decodeReason`. A cancellation stays
 * the bare `CANCELLED_REASON`, which the API and the streams compare against.
 */
export function encodeReason(code: string, message: string): string {
  if (code === ECANCELLED) return CANCELLED_REASON;
  return `[${code}] ${message.replace(CODED_REASON, '')}`;
}

/** The one reader of a stored failed reason. A reason without a code is EUNKNOWN. */
export function decodeReason(reason: string): { code: string; message: string } {
  if (reason === CANCELLED_REASON) return { code: ECANCELLED, message: reason };
  if (reason === BULLMQ_STALLED_REASON) return { code: ESTALLED, message: reason };
  const m = CODED_REASON.exec(reason);
  return m ? { code: m[1], message: reason.slice(m[0].length) } : { code: EUNKNOWN, message: reason };
}

/** The stable code a live error carries in its `code` field (EUNKNOWN without one); its message is never read. */
export function codeOf(err: unknown): string {
  const code = (err as { code?: unknown } | null | undefined)?.code;
  return typeof code === 'string' && CODE_SHAPE.test(code) ? code : EUNKNOWN;
}

/**
 * The code of a failure BullMQ reported: the error's own field when the processor's error is at hand,
 * else the code its message carries as the stored failed reason (`decodeReason`).
 */
export function failureCodeOf(err: { code?: unknown; message?: unknown }): string {
  const code = codeOf(err);
  return code !== EUNKNOWN ? code : decodeReason(typeof err.message === 'string' ? err.message : '').code;
}

/** What the call that ended in `err` was billed, when it answered before failing (see `BilledCall`). */
export function billedOf(err: unknown): BilledCall | undefined {
  const billed = (err as { billed?: BilledCall } | null | undefined)?.billed;
  return billed && typeof billed === 'object' && typeof billed.costUsd === 'number' ? billed : undefined;
}

/**
 * `err` itself (its class, code, delay and model still decide the outcome), now carrying `billed` as what the
 * attempt's earlier calls were billed: a guard that runs several calls in one attempt (a route's tries) rethrows
 * the last call's error, which alone knows nothing of the calls before it. Returns whether it could carry it.
 */
export function carryBilled(err: unknown, billed: BilledCall): boolean {
  if (err === null || typeof err !== 'object' || !Object.isExtensible(err)) return false;
  Object.defineProperty(err, 'billed', { value: billed, enumerable: true, configurable: true, writable: true });
  return true;
}

/** What happens to a job whose attempt threw `err`. */
export function classify(err: unknown): Outcome {
  if (err instanceof DelayJobError) return { kind: 'delay', reason: err.reason, delayMs: err.delayMs };
  const e = (err ?? {}) as { name?: unknown; retryable?: unknown; retryAfterMs?: unknown; msBeforeNext?: unknown; retryAtMs?: unknown; model?: unknown };
  const code = codeOf(err);
  const model = typeof e.model === 'string' ? { model: e.model } : {};
  // A provider 429 reschedules, never fails: the job waits without using an attempt, and the model pauses.
  // (RetryAfterError is the explicit "retry, using an attempt" and keeps that meaning.)
  if (code === ERATELIMIT && !(err instanceof RetryAfterError)) {
    const delayMs = typeof e.retryAfterMs === 'number' && e.retryAfterMs > 0 ? e.retryAfterMs : PROVIDER_429_DEFAULT_DELAY_MS;
    return { kind: 'delay', reason: 'provider_rate_limited', delayMs, ...model };
  }
  if (code === EQUOTAEXHAUSTED) {
    const delayMs = typeof e.retryAtMs === 'number' ? e.retryAtMs - Date.now() : typeof e.retryAfterMs === 'number' ? e.retryAfterMs : PROVIDER_429_DEFAULT_DELAY_MS;
    return { kind: 'delay', reason: 'provider_quota', delayMs: Math.max(1, delayMs), ...model };
  }
  // Postgres out of reach on the attempt's path (its knowledge search; a route's fallback whose prompt needed it):
  // nothing is wrong with the job or the model, so the job waits without using an attempt, and no model pauses.
  // This is the first deferral's wait: the processor lengthens it per deferral of the job in a row (db-deferrals.ts).
  if (code === EDBUNAVAILABLE && e.retryable !== false && !(err instanceof RetryAfterError)) {
    return { kind: 'delay', reason: 'database_unavailable', delayMs: DB_UNAVAILABLE_DELAY_MS };
  }
  // An open breaker (OpenCircuitError) is an outage to wait out; it says when the next probe may run.
  if (code === 'EOPENBREAKER') {
    const delayMs = typeof e.msBeforeNext === 'number' ? e.msBeforeNext : typeof e.retryAtMs === 'number' ? e.retryAtMs - Date.now() : undefined;
    // The model it names pauses (a route's primary, say), not the job's own model, which may be healthy.
    if (delayMs !== undefined) return { kind: 'delay', reason: 'breaker_open', delayMs: Math.max(0, delayMs), ...model };
  }
  const fails = e.retryable === false || e.name === 'UnrecoverableError' || (e.retryable !== true && FAIL_CODES.has(code));
  if (fails) return { kind: 'fail', code };
  return typeof e.retryAfterMs === 'number' && e.retryAfterMs > 0 ? { kind: 'retry', code, retryAfterMs: e.retryAfterMs } : { kind: 'retry', code };
}
