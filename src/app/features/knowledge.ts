import { createResultCache } from '../../shared/cache/result-cache.js';
import { createSemanticCache } from '../../shared/cache/semantic-cache.js';
import { createIngestLedger, createKnowledgeStore } from '../../shared/knowledge/knowledge-store.js';
import { createVectorSearch } from '../../shared/knowledge/vector-search.js';
import { createSearchLedger } from '../../shared/knowledge/search-ledger.js';
import { createReaderInvalidation, shardedResults } from '../../shared/knowledge/reader-invalidation.js';
import { knowledgeRoutes } from '../../producers/area-routes.js';
import type { Feature, FeatureDeps } from '../feature.js';
import { agentqPrefix } from '../../shared/core/queue-keys.js';

/** Knowledge ingestion and search for RAG, and cache invalidation (routes in `producers/route-table.ts`). */
export function createKnowledgeFeature(deps: FeatureDeps): Feature {
  const { infra, cfg, redis } = deps;
  const embed = (texts: string[]) => deps.llm.embed(texts, { taskType: 'RETRIEVAL_QUERY' });
  // An org's ingest records what embedding its documents cost in its ledger (agent_runs: /v1/usage, its budget).
  // Each row made here is counted in this process's agentq_embedding_cost_usd_total and agentq_embedding_tokens_total
  // (estimated, as the row is).
  const price = createIngestLedger(cfg.GEMINI_EMBEDDING_MODEL, cfg.PRICES_JSON);
  const store = createKnowledgeStore({
    pool: infra.db.pool,
    embed: (texts) => deps.llm.embed(texts, { taskType: 'RETRIEVAL_DOCUMENT' }),
    ledger: { ...price, recorded: (run) => deps.metrics.embeddingRecorded('ingest', { tokens: run.embeddingTokens, costUsd: run.embeddingCostUsd }) },
  });
  // So does a search API call its query's embedding (kind `search`).
  const searchLedger = createSearchLedger({ pool: infra.db.pool, price, onRecorded: (run) => deps.metrics.embeddingRecorded('search', { tokens: run.embeddingTokens, costUsd: run.embeddingCostUsd }) });
  const search = createVectorSearch({ pool: infra.db.pool, embed });
  // Each queue shard caches its orgs' results (app/cell.ts): a version bump goes to the org's.
  const caches = deps.cells.map((c) => createResultCache({ redis, prefix: agentqPrefix(c.prefix), l1Max: 1, l1TtlMs: 1, l2TtlS: cfg.CACHE_TTL_S }));
  const results = shardedResults(caches, (orgId) => deps.cellOf(orgId).index);
  const semantic = createSemanticCache({ pool: infra.db.pool, embed, threshold: cfg.SEMANTIC_CACHE_THRESHOLD, ttlS: cfg.SEMANTIC_CACHE_TTL_S });

  // An org's ingest and search are refused once its monthly budget is spent, as its jobs are (counted as admission's
  // quota refusals).
  const budget = async (orgId: string) => {
    const decision = await deps.budget(orgId);
    if (!decision.allowed) deps.metrics.admissionRejected('quota');
    return decision;
  };

  return {
    name: 'knowledge',
    routes: (app) => knowledgeRoutes(app, { store, search, searchLedger, budget, results, semantic, afterIngest: createReaderInvalidation({ readersOf: (table) => deps.registry.readersOf(table), results, semantic }) }),
  };
}
