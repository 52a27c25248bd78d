import { DelayJobError, type JobContext, type Middleware } from '../middleware.js';
import { OpenCircuitError, type CircuitBreaker } from '../../shared/limits/circuit-breaker.js';
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
 */
export function createBreakerGuard(opts: { breaker: CircuitBreaker; keyFor?: (ctx: JobContext) => string }): Middleware {
  const keyFor = opts.keyFor ?? ((ctx: JobContext) => `gemini:${ctx.model}`);
  const { breaker } = opts;
  return async (ctx, next) => {
    const key = keyFor(ctx);
    const gate = await breaker.acquire(key);
    guardEvent(ctx.span, 'agentq.guard.breaker', gate.allowed
      ? { 'agentq.breaker.key': key, 'agentq.breaker.allowed': true, 'agentq.breaker.state': gate.probe ? 'halfOpen' : 'closed' }
      : { 'agentq.breaker.key': key, 'agentq.breaker.allowed': false, 'agentq.breaker.state': gate.state, 'agentq.breaker.retry_in_ms': gate.msBeforeNext });
    if (!gate.allowed) throw new OpenCircuitError(key, gate.state, gate.retryAtMs, gate.msBeforeNext);
    let result;
    try {
      result = await next();
    } catch (err) {
      // A guard inside this one (rate limiter, another breaker) refused before any upstream call.
      const notCalled = err instanceof DelayJobError || err instanceof OpenCircuitError;
      const ignored = notCalled || abortedByCaller(ctx) || breaker.errorFilter(err);
      await (ignored ? breaker.onIgnored(key, gate.probe) : breaker.onFailure(key, gate.probe)).catch((recordErr: unknown) =>
        ctx.logger.warn({ err: recordErr, key }, 'circuit breaker: failed to record an error'),
      );
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
