import { DelayJobError, type JobContext, type Middleware } from '../middleware.js';
import { OpenCircuitError, type CircuitBreaker } from '../../shared/limits/circuit-breaker.js';
import { QuotaExhaustedError } from '../../shared/limits/quota-exhausted-error.js';
import { codeOf, EQUOTAEXHAUSTED } from '../../shared/core/outcomes.js';
import { PromptBuildError } from '../../shared/core/errors.js';
import { guardEvent } from '../../shared/telemetry/tracing.js';

/** A caller abort (cancel, shutdown) says nothing about the upstream; a timeout abort does. */
function abortedByCaller(ctx: JobContext): boolean {
  if (!ctx.signal.aborted) return false;
  const reason = ctx.signal.reason as { name?: string } | undefined;
  return reason?.name !== 'TimeoutError';
}

/**
 * Wraps the LLM call in a breaker: refused calls throw `OpenCircuitError` (routing may fall back to
 * another model; the processor delays an uncaught one until `retryAtMs` without using an attempt).
 * A returned result, successful or not, means the upstream answered and counts as a success.
 *
 * A per-day quota 429 (EQUOTAEXHAUSTED from the call, naming the key's model) marks the key exhausted until the quota's reset, and
 * while the mark lives `acquire` refuses the key (same script, no extra round trip): `QuotaExhaustedError`,
 * so the route guard serves the job from the fallback without calling the spent model first.
 */
export function createBreakerGuard(opts: { breaker: CircuitBreaker; keyFor?: (ctx: JobContext) => string }): Middleware {
  const keyFor = opts.keyFor ?? ((ctx: JobContext) => `gemini:${ctx.model}`);
  const { breaker } = opts;
  /** Until the reset the 429 named (`retryAtMs`: RetryInfo's delay, else the next midnight Pacific). */
  async function markExhausted(ctx: JobContext, key: string, err: unknown): Promise<void> {
    const { retryAtMs, retryAfterMs } = err as { retryAtMs?: unknown; retryAfterMs?: unknown };
    const forMs = typeof retryAtMs === 'number' ? retryAtMs - Date.now() : typeof retryAfterMs === 'number' ? retryAfterMs : 0;
    if (!(forMs > 0)) return;
    ctx.logger.warn({ key, untilMs: Date.now() + forMs }, 'provider quota spent: model skipped until its reset');
    await breaker.markExhausted(key, forMs).catch((markErr: unknown) => ctx.logger.warn({ err: markErr, key }, 'could not mark a spent quota'));
  }

  return async (ctx, next) => {
    const key = keyFor(ctx);
    const gate = await breaker.acquire(key);
    guardEvent(ctx.span, 'agentq.guard.breaker', gate.allowed
      ? { 'agentq.breaker.key': key, 'agentq.breaker.allowed': true, 'agentq.breaker.state': gate.probe ? 'halfOpen' : 'closed' }
      : { 'agentq.breaker.key': key, 'agentq.breaker.allowed': false, 'agentq.breaker.state': gate.state, 'agentq.breaker.retry_in_ms': gate.msBeforeNext });
    if (!gate.allowed) {
      // Local clock: the delay is computed from Date.now() by whoever parks the job.
      if (gate.state === 'exhausted') throw new QuotaExhaustedError(ctx.model, Date.now() + gate.msBeforeNext);
      throw new OpenCircuitError(key, gate.state, gate.retryAtMs, gate.msBeforeNext, ctx.model);
    }
    let result;
    try {
      result = await next();
    } catch (err) {
      // A guard inside this one (rate limiter, another breaker) refused before any upstream call, or the
      // prompt could not be built (its knowledge search): nothing was asked of this key's model.
      const notCalled = err instanceof DelayJobError || err instanceof OpenCircuitError || err instanceof QuotaExhaustedError || err instanceof PromptBuildError;
      const ignored = notCalled || abortedByCaller(ctx) || breaker.errorFilter(err);
      // Only the model the 429 names is spent (never another model's quota, such as the embedding model's).
      const spent = !notCalled && codeOf(err) === EQUOTAEXHAUSTED && (err as { model?: unknown }).model === ctx.model;
      await Promise.all([
        (ignored ? breaker.onIgnored(key, gate.probe) : breaker.onFailure(key, gate.probe)).catch((recordErr: unknown) =>
          ctx.logger.warn({ err: recordErr, key }, 'circuit breaker: failed to record an error'),
        ),
        spent ? markExhausted(ctx, key, err) : undefined,
      ]);
      throw err;
    }
    // Saves a Redis round trip per call in the common case; see `AcquireResult.clean`.
    if (gate.clean) return result;
    await breaker.onSuccess(key, gate.probe).catch((recordErr: unknown) =>
      ctx.logger.warn({ err: recordErr, key }, 'circuit breaker: failed to record a success'),
    );
    return result;
  };
}
