import { performance } from 'node:perf_hooks';
import type { ClaimAnswer, JobContext, Middleware } from '../middleware.js';
import type { AgentResult } from '../../shared/core/types.js';
import type { CacheKeyParts, ResultCache } from '../../shared/cache/result-cache.js';
import { guardEvent } from '../../shared/telemetry/tracing.js';

export const cacheKeyPartsOf = (ctx: JobContext): CacheKeyParts => ({
  orgId: ctx.orgId,
  agent: ctx.agentName,
  action: ctx.actionName,
  model: ctx.model,
  promptVersion: ctx.action.promptVersion,
  input: ctx.input,
});

/**
 * Serves identical jobs from the result cache and makes concurrent identical jobs share one LLM call.
 * A hit (or a result shared from another job's call) costs nothing: tokens 0, cost 0, durationMs is
 * this lookup or wait. Only `success: true` results are cached, and not a fallback route's. Streaming jobs go through too: on a
 * hit the processor just emits the final result. If the cache itself fails before the call, the job
 * calls through uncached rather than failing.
 */
export function createResultCacheGuard(opts: { cache: ResultCache<AgentResult> }): Middleware {
  const { cache } = opts;
  return async (ctx, next) => {
    const started = performance.now();
    let called = false;
    const call = () => {
      called = true;
      // Before the call: an attempt whose call then fails still shows its cache decision.
      guardEvent(ctx.span, 'agentq.guard.result_cache', { 'agentq.cache.hit': 'miss' });
      return next();
    };
    let outcome;
    try {
      outcome = await cache.singleFlight(cacheKeyPartsOf(ctx), call, {
        // A fallback route's answer is a degraded one (another model, or another agent's prompt) under the
        // primary's key: cached, it would be served for CACHE_TTL_S after the primary is back.
        shouldCache: (r) => r.success === true && r.route !== 'fallback',
        signal: ctx.signal,
        owner: ctx.job.id,
        ...(ctx.cacheLookup ? { prefetched: ctx.cacheLookup } : {}),
        ...(ctx.usage ? { usageEntry: { field: ctx.usage.field, of: ctx.usage.entry, ...(ctx.usage.bill ? { bill: ctx.usage.bill } : {}), ...(ctx.usage.rider ? { rider: ctx.usage.rider } : {}) } } : {}),
      });
    } catch (err) {
      if (called || ctx.signal.aborted) throw err;
      ctx.logger.warn({ err }, 'result cache unavailable; calling through');
      guardEvent(ctx.span, 'agentq.guard.result_cache', { 'agentq.cache.hit': 'unavailable' });
      return next();
    }
    if (outcome.usageAppended) ctx.usage?.carried();
    if (outcome.from === 'call') return outcome.value;
    guardEvent(ctx.span, 'agentq.guard.result_cache', { 'agentq.cache.hit': outcome.from });
    return cachedResult(outcome.value, outcome.from, Math.round(performance.now() - started));
  };
}

/**
 * A cached answer as the attempt's result: marked a hit, no tokens, no cost. Nothing was billed, so it carries no
 * tier and no standard-tier cost: those of the job whose answer was stored described that job's call, not this one.
 */
function cachedResult(value: AgentResult, from: 'l1' | 'l2', durationMs: number): AgentResult {
  const { tier: _billedTier, standardCostUsd: _billedStandard, ...answer } = value;
  return { ...answer, cacheHit: from, tokensUsed: { input: 0, output: 0 }, costUsd: 0, durationMs };
}

/**
 * An L1 hit answered before the claim, as `cachedResult` makes it (its duration 0: no lookup was timed). One
 * function for every call: the cache keeps its output beside the entry, so a hit does not copy the value again.
 */
const l1Answer = (value: AgentResult): AgentResult => cachedResult(value, 'l1', 0);

/**
 * The attempt's answer when L1 holds it (from memory, no Redis call), known before the fair claim so the
 * claim can carry its usage row (`ClaimPrep.answer`); `serve` records the guard's decision on the span. The
 * same answer this guard gives an L1 hit: it is the chain's first link, and a hit calls nothing after it.
 * Decided before the claim's round trip: an invalidation arriving during it does not change this answer,
 * as one arriving just after an L1 hit would not (the broadcast's bound is 100 ms; a round trip is ~1).
 * `parts`: the job's key parts when the caller built them already (`prepareClaim`, for its `prepare` just before).
 */
export function answerFromMemory(cache: ResultCache<AgentResult>, ctx: JobContext, parts: CacheKeyParts = cacheKeyPartsOf(ctx)): ClaimAnswer | undefined {
  const result = cache.fromMemory(parts, l1Answer);
  if (!result) return undefined;
  return {
    result,
    serve() {
      guardEvent(ctx.span, 'agentq.guard.result_cache', { 'agentq.cache.hit': 'l1' });
      return result;
    },
  };
}
