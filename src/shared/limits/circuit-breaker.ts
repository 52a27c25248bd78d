import { EventEmitter } from 'node:events';
import { AgentqError } from '../core/errors.js';
import { isProviderHealthNeutral } from '../core/outcomes.js';
import { defineLua, type RedisClient } from '../infra/lua.js';
import { guardKeys } from '../core/queue-keys.js';

export type BreakerState = 'closed' | 'open' | 'halfOpen';

export type AcquireResult =
  | { allowed: true; probe: boolean; /** Closed with no failures counted: a success need not be recorded. */ clean?: boolean }
  | { allowed: false; state: 'open' | 'halfOpen'; retryAtMs: number; msBeforeNext: number }
  /** The key's quota is spent (`markExhausted`) until `retryAtMs`: refused without touching the breaker. */
  | { allowed: false; state: 'exhausted'; retryAtMs: number; msBeforeNext: number };

export interface BreakerSnapshot {
  state: BreakerState;
  consecutiveFailures: number;
  /** Redis epoch ms at which an open breaker admits a probe (0 unless open). */
  retryAtMs: number;
  probeInFlight: boolean;
}

/** Thrown by the breaker guard when a breaker refuses a call. */
export class OpenCircuitError extends AgentqError {
  constructor(
    readonly key: string,
    readonly state: 'open' | 'halfOpen',
    readonly retryAtMs: number,
    readonly msBeforeNext: number,
  ) {
    super(`breaker ${key} is ${state}; next probe at ${new Date(retryAtMs).toISOString()}`, 'EOPENBREAKER');
  }
}

export interface BreakerOptions {
  redis: RedisClient;
  prefix: string;
  /** Consecutive failures (summed over all processes) that open the breaker. Default 5. */
  failureThreshold?: number;
  /** Probe successes in a row that close a half-open breaker. Default 2. */
  successThreshold?: number;
  /** How long the breaker stays open before a probe is allowed. Default 30 000. */
  timeoutMs?: number;
  /** A probe that has not reported after this long is presumed dead and another may start. Default 90 000 (above the LLM timeout). */
  probeLeaseMs?: number;
  /** How long a caller refused because a probe is in flight is told to wait at most. Default 1000. */
  halfOpenRetryMs?: number;
  /** Also open when failures exceed this % of calls in the rolling window (off when unset). */
  errorThresholdPercentage?: number;
  /** Minimum calls in the window before the percentage applies. Default 10. */
  volumeThreshold?: number;
  rollingWindowMs?: number;
  rollingWindowSlots?: number;
  /** True for errors that must NOT count as failures. Default: `defaultErrorFilter`. */
  errorFilter?: (err: unknown) => boolean;
}

/**
 * Errors that say nothing about the upstream's health: `retryable === false` (validation, 4xx other
 * than 429, as `LlmError` marks them), answers that fail their output schema (retried, but the model did
 * answer: `isProviderHealthNeutral`), calls aborted by the caller, and provider 429s (a quota, not an
 * outage: the job waits out the quota and the dispatcher pauses the model instead). A timeout is not
 * filtered: a slow upstream is an unhealthy one.
 */
export function defaultErrorFilter(err: unknown): boolean {
  if (!err || typeof err !== 'object') return false;
  const e = err as { retryable?: unknown; name?: unknown; code?: unknown };
  if (e.retryable === false || isProviderHealthNeutral(err)) return true;
  if (e.code === 'ERATELIMIT' || e.code === 'EQUOTAEXHAUSTED') return true;
  return e.name === 'AbortError' || e.code === 'ABORT_ERR' || e.code === 'ABORTED' || e.code === 'EABORTED';
}

export interface CircuitBreaker extends EventEmitter {
  readonly errorFilter: (err: unknown) => boolean;
  acquire(key: string): Promise<AcquireResult>;
  onSuccess(key: string, probe: boolean): Promise<void>;
  onFailure(key: string, probe: boolean): Promise<void>;
  /** The call ended without telling anything (filtered error): only releases a probe lease. */
  onIgnored(key: string, probe: boolean): Promise<void>;
  /** Applies `errorFilter`: `onIgnored` for filtered errors, `onFailure` otherwise. */
  onError(key: string, probe: boolean, err: unknown): Promise<void>;
  /**
   * The provider said the key's quota is spent (a per-day 429): `acquire` refuses it for `forMs`, read in the
   * same script as the breaker (no extra round trip per call). One SET with an expiry; a later mark replaces it.
   */
  markExhausted(key: string, forMs: number): Promise<void>;
  state(key: string): Promise<BreakerSnapshot>;
  reset(key: string): Promise<void>;
}

/**
 * A circuit breaker per key (e.g. `gemini:<model>`) whose state lives in one Redis hash, so every
 * process sees the same breaker. Each transition is one Lua call timed with Redis `TIME`.
 * Events `open`, `halfOpen`, `close`, `reject` are emitted (with the key) by the process whose call
 * caused them, not broadcast to all processes.
 */
export function createCircuitBreaker(opts: BreakerOptions): CircuitBreaker {
  const failureThreshold = opts.failureThreshold ?? 5;
  const successThreshold = opts.successThreshold ?? 2;
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const probeLeaseMs = opts.probeLeaseMs ?? 90_000;
  const halfOpenRetryMs = Math.min(opts.halfOpenRetryMs ?? 1000, timeoutMs);
  const pct = opts.errorThresholdPercentage ?? 0;
  const volumeThreshold = opts.volumeThreshold ?? 10;
  const windowMs = opts.rollingWindowMs ?? 60_000;
  const slots = opts.rollingWindowSlots ?? 10;
  // Idle long enough and the key lapses to "closed": by then an open breaker would have probed anyway.
  const ttlMs = 2 * Math.max(timeoutMs + probeLeaseMs, windowMs, 60_000);
  const acquireLua = defineLua(opts.redis, 'circuit-breaker-acquire-2.lua');
  const recordLua = defineLua(opts.redis, 'circuit-breaker-record-1.lua');
  const stateLua = defineLua(opts.redis, 'circuit-breaker-state-1.lua');
  const fullKey = (key: string) => guardKeys.breaker(opts.prefix, key);
  const markKey = (key: string) => guardKeys.quotaMark(opts.prefix, key);

  const emitter = new EventEmitter() as CircuitBreaker;

  const record = async (key: string, outcome: 'success' | 'failure' | 'ignore', probe: boolean) => {
    const [event, , retryAtMs] = (await recordLua(
      [fullKey(key)],
      [outcome, probe ? '1' : '0', failureThreshold, successThreshold, timeoutMs, pct, volumeThreshold, windowMs, slots, ttlMs],
    )) as [string, BreakerState, number];
    if (event === 'open') emitter.emit('open', key, { retryAtMs });
    else if (event === 'close') emitter.emit('close', key);
  };

  return Object.assign(emitter, {
    errorFilter: opts.errorFilter ?? defaultErrorFilter,
    async acquire(key: string): Promise<AcquireResult> {
      const [allowed, probe, state, retryAtMs, now, event, failures] = (await acquireLua(
        [fullKey(key), markKey(key)],
        [probeLeaseMs, halfOpenRetryMs, ttlMs],
      )) as [number, number, BreakerState | 'exhausted', number, number, string, number?];
      if (event === 'halfOpen') emitter.emit('halfOpen', key);
      // Without a rolling failure-rate window, a success on a clean closed breaker changes nothing.
      if (allowed === 1) return { allowed: true, probe: probe === 1, ...(state === 'closed' && failures === 0 && pct === 0 ? { clean: true } : {}) };
      const msBeforeNext = Math.max(0, retryAtMs - now);
      if (state === 'exhausted') return { allowed: false, state, retryAtMs, msBeforeNext };
      const result = { allowed: false as const, state: state as 'open' | 'halfOpen', retryAtMs, msBeforeNext };
      emitter.emit('reject', key, result);
      return result;
    },
    onSuccess: (key: string, probe: boolean) => record(key, 'success', probe),
    onFailure: (key: string, probe: boolean) => record(key, 'failure', probe),
    onIgnored: (key: string, probe: boolean) => record(key, 'ignore', probe),
    onError(key: string, probe: boolean, err: unknown) {
      return record(key, emitter.errorFilter(err) ? 'ignore' : 'failure', probe);
    },
    async markExhausted(key: string, forMs: number) {
      await opts.redis.set(markKey(key), String(Date.now() + forMs), 'PX', Math.max(1, Math.round(forMs)));
    },
    async state(key: string): Promise<BreakerSnapshot> {
      const [state, cf, retryAtMs, probing] = (await stateLua([fullKey(key)], [])) as [BreakerState, number, number, number];
      return { state, consecutiveFailures: cf, retryAtMs, probeInFlight: probing === 1 };
    },
    async reset(key: string) {
      // Only open and halfOpen are ever written to `st`; a key without it was already closed.
      const [[, st]] = (await opts.redis.multi().hget(fullKey(key), 'st').del(fullKey(key)).exec()) as [[unknown, string | null]];
      if (st) emitter.emit('close', key);
    },
  });
}
