import { EventEmitter } from 'node:events';
import { AgentqError } from '../core/errors.js';
import { isProviderHealthNeutral } from '../core/outcomes.js';
import { defineLua, type RedisClient } from '../infra/lua.js';
import { subscribeShardChannel } from '../infra/redis/shard-channel.js';
import { guardKeys } from '../core/queue-keys.js';
import type { Logger } from '../core/logger.js';

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
    /** The model the refused call was for: what waits (a route's primary, not the job's own model). */
    readonly model?: string,
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
  /**
   * A connection of its own for the invalidation broadcast. With it, `acquire` of a key whose last answer was
   * closed-clean is answered from memory (no Redis call) for up to `viewTtlMs`: every write that ends a
   * clean state is broadcast (in the same script as the write) and drops the key here as the message arrives;
   * while this connection is down nothing is served from memory. Without it, every `acquire` runs the script.
   */
  subscriber?: RedisClient;
  /**
   * Longest a clean answer is served from memory, a bound on staleness should a broadcast be lost while its
   * connection stays up (Redis drops pub/sub messages only with the connection, which drops the view at once).
   * Default 5000: one acquire script per model per process every 5 s on a busy worker, not every second.
   */
  viewTtlMs?: number;
  /** Called when this process has applied an invalidation broadcast for `key` (tests, metrics). */
  onInvalidation?: (key: string) => void;
  logger?: Logger;
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
   * same script as the breaker (no extra round trip per call). One SET with an expiry (a later mark replaces it)
   * and, in the same script, the broadcast that drops the key from every process's clean view.
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
 *
 * Clean view (with a `subscriber`): the normal answer, closed with no failures counted, is remembered per key
 * and served from memory. Only two writes end that state: a failure (or a trip) recorded on a closed key
 * (`circuit-breaker-record-1.lua`) and a quota mark (`circuit-breaker-mark-1.lua`); both SPUBLISH the key in
 * the same script, always (other processes' views depend on it whether or not this one has a view). Probes,
 * half-open and open states are never served from memory: their answers are not clean. An answer whose call
 * was in flight across any invalidation is not remembered (`epoch`), and none is served longer than `viewTtlMs`.
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
  const markLua = defineLua(opts.redis, 'circuit-breaker-mark-1.lua');
  const fullKey = (key: string) => guardKeys.breaker(opts.prefix, key);
  const markKey = (key: string) => guardKeys.quotaMark(opts.prefix, key);
  const channel = guardKeys.breakerInvalidations(opts.prefix);
  const head = guardKeys.breakerHead(opts.prefix);

  const viewTtlMs = opts.viewTtlMs ?? 5000;
  /** Breaker hash key -> `performance.now()` until which its clean answer may be served. One entry per model. */
  const view = new Map<string, number>();
  /** Served from memory only while the broadcast is subscribed, so no invalidation can pass unseen. */
  let viewLive = false;
  /** Bumped on every invalidation seen (and on losing the broadcast): an answer read before it is not remembered. */
  let epoch = 0;
  /**
   * Breaker hash key -> the acquire call in flight that may put it back in the view (sent while the view was live
   * and did not hold the key). Acquires of the key meanwhile wait for it and are served from the view it leaves, as
   * they would have been had they come after its reply; only when it left none (an answer that was not clean, or an
   * invalidation seen meanwhile) does each ask Redis itself, so a probe or a refusal is never shared. The jobs of a
   * throttled org's wake-up start together, after the view (`viewTtlMs`) lapsed since the last wake-up: each
   * asked Redis, one call a job instead of one a process.
   */
  const refreshing = new Map<string, Promise<AcquireResult>>();

  function invalidateLocal(hashKey: string | undefined): void {
    epoch++;
    if (hashKey === undefined) view.clear();
    else view.delete(hashKey);
  }

  const sub = opts.subscriber;
  if (sub) {
    const live = () => {
      // Whatever was broadcast while unsubscribed is unknown: start from an empty view.
      invalidateLocal(undefined);
      viewLive = true;
    };
    sub.on('smessage', (ch: string, msg: string) => {
      if (ch !== channel) return;
      invalidateLocal(msg);
      opts.onInvalidation?.(msg.startsWith(head) ? msg.slice(head.length) : msg);
    });
    // A sharded channel (SSUBSCRIBE): on a cluster it is served by the shard that holds the breaker hashes.
    const subscription = subscribeShardChannel(sub, channel, {
      onLive: live,
      // Lost connection or subscription: messages may be missed, so the view is dropped and bypassed until subscribed again.
      onLost: () => {
        viewLive = false;
        invalidateLocal(undefined);
      },
      onError: (err) => opts.logger?.warn({ err }, 'circuit breaker: could not subscribe to invalidations again; every acquire goes to Redis until it is'),
    });
    subscription.subscribed.catch((err: unknown) => opts.logger?.warn({ err }, 'circuit breaker: could not subscribe to invalidations; every acquire goes to Redis until it is'));
  }

  const emitter = new EventEmitter() as CircuitBreaker;

  const record = async (key: string, outcome: 'success' | 'failure' | 'ignore', probe: boolean) => {
    // Our own broadcast comes back on the subscriber, but not before the reply: drop the key now.
    if (outcome === 'failure') invalidateLocal(fullKey(key));
    const [event, , retryAtMs] = (await recordLua(
      [fullKey(key)],
      [outcome, probe ? '1' : '0', failureThreshold, successThreshold, timeoutMs, pct, volumeThreshold, windowMs, slots, ttlMs, channel],
    )) as [string, BreakerState, number];
    if (event === 'open') emitter.emit('open', key, { retryAtMs });
    else if (event === 'close') emitter.emit('close', key);
  };

  /** The key's clean answer, if the view holds one still young enough to serve. */
  const fromView = (hashKey: string) => {
    const until = viewLive ? view.get(hashKey) : undefined;
    return until !== undefined && performance.now() < until;
  };

  /** The acquire script's answer; a clean one is remembered in the view (unless an invalidation came meanwhile). */
  const ask = async (key: string, hashKey: string): Promise<AcquireResult> => {
    const seen = epoch;
    // Taken before the call: the answer may be this old by the time it arrives.
    const sentAt = performance.now();
    const [allowed, probe, state, retryAtMs, now, event, failures] = (await acquireLua(
      [hashKey, markKey(key)],
      [probeLeaseMs, halfOpenRetryMs, ttlMs],
    )) as [number, number, BreakerState | 'exhausted', number, number, string, number?];
    if (event === 'halfOpen') emitter.emit('halfOpen', key);
    // Without a rolling failure-rate window, a success on a clean closed breaker changes nothing.
    if (allowed === 1 && state === 'closed' && failures === 0 && pct === 0) {
      if (viewLive && epoch === seen) view.set(hashKey, sentAt + viewTtlMs);
      return { allowed: true, probe: false, clean: true };
    }
    view.delete(hashKey);
    if (allowed === 1) return { allowed: true, probe: probe === 1 };
    const msBeforeNext = Math.max(0, retryAtMs - now);
    if (state === 'exhausted') return { allowed: false, state, retryAtMs, msBeforeNext };
    const result = { allowed: false as const, state: state as 'open' | 'halfOpen', retryAtMs, msBeforeNext };
    emitter.emit('reject', key, result);
    return result;
  };

  return Object.assign(emitter, {
    errorFilter: opts.errorFilter ?? defaultErrorFilter,
    async acquire(key: string): Promise<AcquireResult> {
      const hashKey = fullKey(key);
      if (fromView(hashKey)) return { allowed: true, probe: false, clean: true };
      const inFlight = viewLive ? refreshing.get(hashKey) : undefined;
      if (inFlight) {
        await inFlight.catch(() => undefined);
        if (fromView(hashKey)) return { allowed: true, probe: false, clean: true };
        return ask(key, hashKey);
      }
      const asked = ask(key, hashKey);
      if (viewLive) {
        refreshing.set(hashKey, asked);
        const done = () => {
          if (refreshing.get(hashKey) === asked) refreshing.delete(hashKey);
        };
        asked.then(done, done);
      }
      return asked;
    },
    onSuccess: (key: string, probe: boolean) => record(key, 'success', probe),
    onFailure: (key: string, probe: boolean) => record(key, 'failure', probe),
    onIgnored: (key: string, probe: boolean) => record(key, 'ignore', probe),
    onError(key: string, probe: boolean, err: unknown) {
      return record(key, emitter.errorFilter(err) ? 'ignore' : 'failure', probe);
    },
    async markExhausted(key: string, forMs: number) {
      invalidateLocal(fullKey(key));
      await markLua([markKey(key)], [String(Date.now() + forMs), Math.max(1, Math.round(forMs)), channel, fullKey(key)]);
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
