import type { Logger } from '../../shared/core/logger.js';
import type { AgentResult } from '../../shared/core/types.js';
import type { Middleware } from '../middleware.js';
import type { SemanticCache } from '../../shared/cache/semantic-cache.js';
import { guardEvent } from '../../shared/telemetry/tracing.js';

type CachedResult = Omit<AgentResult, 'cacheHit' | 'durationMs' | 'route'>;

/**
 * Serves actions that opt in with `semanticKey` from the pgvector cache. A hit costs nothing and never
 * reaches the model; a miss runs the job and caches a successful result. The cache is an optimisation:
 * if Postgres or the embedder fails, the job runs as if there were no cache.
 */
export function createSemanticCacheGuard({ cache, logger }: { cache: Pick<SemanticCache, 'lookup' | 'store'>; logger?: Logger }): Middleware {
  return async (ctx, next) => {
    const keyOf = ctx.action.semanticKey;
    if (!keyOf) return next();
    const text = keyOf(ctx.input);
    if (typeof text !== 'string' || !text.trim()) return next();
    const inputScope = ctx.action.semanticScope?.(ctx.input) ?? '';
    const scope = { orgId: ctx.orgId, agent: ctx.agentName, action: ctx.actionName, model: ctx.model, promptVersion: ctx.action.promptVersion, inputScope };
    const log = logger ?? ctx.logger;

    const started = Date.now();
    let embedding: number[] | undefined;
    let lookedAt: Date | undefined;
    // Each embedding call, on the attempt's row (estimated: Gemini reports no usage for embeddings), counted once it
    // is made: the SQL after it may fail (Postgres down), and the job then runs without the cache, the call paid.
    const hooks = { onEmbedded: (texts: string[]) => ctx.embedded?.(texts) };
    try {
      const found = await cache.lookup<CachedResult>({ ...scope, text }, hooks);
      guardEvent(ctx.span, 'agentq.guard.semantic_cache', found.hit ? { 'agentq.cache.hit': 'semantic', 'agentq.cache.similarity': found.similarity } : { 'agentq.cache.hit': 'miss' });
      if (found.hit) {
        log.debug({ similarity: found.similarity }, 'semantic cache hit');
        return {
          ...found.response,
          success: true,
          cacheHit: 'semantic',
          tokensUsed: { input: 0, output: 0 },
          costUsd: 0,
          durationMs: Date.now() - started,
        };
      }
      embedding = found.embedding;
      lookedAt = found.lookedAt;
    } catch (err) {
      log.warn({ err: (err as Error).message }, 'semantic cache lookup failed; running without it');
    }

    const result = await next();
    if (result.success && result.cacheHit !== 'semantic') {
      const response: CachedResult = { success: true, data: result.data, tokensUsed: result.tokensUsed, costUsd: result.costUsd, model: result.model };
      try {
        // Refused too when the org's answers of the agent were invalidated since the lookup (an ingest, DELETE /v1/cache).
        // Without the lookup's embedding (its lookup failed), the store embeds the text itself: counted by `hooks`.
        const stored = await cache.store({ ...scope, text, embedding, response, ...(lookedAt ? { lookedAt } : {}) }, hooks);
        if (!stored) log.debug('semantic cache: answer not cached (invalidated since its lookup, or a NUL or lone surrogate Postgres cannot hold)');
      } catch (err) {
        log.warn({ err: (err as Error).message }, 'semantic cache store failed');
      }
    }
    return result;
  };
}
