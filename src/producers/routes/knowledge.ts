import type { ResultCache } from '../../shared/cache/result-cache.js';
import type { SemanticCache } from '../../shared/cache/semantic-cache.js';
import { RateLimitedError, ValidationError } from '../../shared/core/errors.js';
import type { QuotaDecision } from '../../shared/infra/db/quotas.js';
import type { KnowledgeTable } from '../../shared/knowledge/knowledge-schemas.js';
import type { KnowledgeStore } from '../../shared/knowledge/knowledge-store.js';
import type { AfterIngest } from '../../shared/knowledge/reader-invalidation.js';
import type { SearchLedger } from '../../shared/knowledge/search-ledger.js';
import type { SearchEmbedded, VectorSearch } from '../../shared/knowledge/vector-search.js';
import { principalOf } from '../auth.js';
import type { Handler } from '../route-spec.js';
import type { cacheQuery, ingestBody, orgTableParam, searchBody, sharedTableParam } from '../schemas/knowledge.js';

export interface KnowledgeRouteDeps {
  store: KnowledgeStore;
  search: VectorSearch;
  /** The result cache an org's answers are in (its queue shard's). */
  results: Pick<ResultCache, 'invalidateOrg' | 'invalidateAgent'>;
  semantic: Pick<SemanticCache, 'invalidate'>;
  /** Invalidates the cached answers of the agents that search a table just written (reader-invalidation.ts). */
  afterIngest: AfterIngest;
  /**
   * The org's monthly budget (absent: not checked): an org whose budget is spent may not ingest nor search, since every
   * document it writes and every query it searches is an embedding call it pays for. Refused as admission refuses a
   * job: 429, `RateLimitedError`.
   */
  budget?: (orgId: string) => Promise<QuotaDecision>;
  /** Records a search's query embedding in the org's ledger (agent_runs, kind `search`); absent: not recorded. */
  searchLedger?: Pick<SearchLedger, 'record'>;
}

/** Upserts documents; the store names a bad document's field from the document down (`documents.N.field`). */
async function ingest(store: KnowledgeStore, table: KnowledgeTable, documents: unknown[], orgId: string | undefined, requestId: string) {
  try {
    // An org's rows record their embedding calls in its ledger (knowledge-store.ts), under this request's id.
    return await store.upsert(table, documents, { orgId, requestId });
  } catch (err) {
    if (err instanceof ValidationError) {
      throw new ValidationError(err.message, err.details.map((d) => ({ ...d, path: d.path === 'table' ? 'table' : `documents.${d.path}` })));
    }
    throw err;
  }
}

/** Before any embedding call: a refused ingest or search costs the org nothing. */
async function refuseOverBudget(deps: KnowledgeRouteDeps, orgId: string | undefined) {
  if (!orgId || !deps.budget) return;
  const budget = await deps.budget(orgId);
  if (!budget.allowed) throw new RateLimitedError(budget.reason, budget.retryAfterS);
}

/** An org-admin writes its org's private rows (chat facts, its own playbooks): the org comes from the key. */
export const ingestOrgDocuments =
  (deps: KnowledgeRouteDeps): Handler<{ params: typeof orgTableParam; body: typeof ingestBody }> =>
  async (req) => {
    const { orgId } = principalOf(req);
    await refuseOverBudget(deps, orgId);
    const result = await ingest(deps.store, req.params.table, req.body.documents, orgId, req.id);
    await deps.afterIngest(req.params.table, orgId);
    return result;
  };

/** Shared rows (no org) are returned by every org's searches, so only the operator writes them. */
export const ingestSharedDocuments =
  (deps: KnowledgeRouteDeps): Handler<{ params: typeof sharedTableParam; body: typeof ingestBody }> =>
  async (req) => {
    const result = await ingest(deps.store, req.params.table, req.body.documents, undefined, req.id);
    await deps.afterIngest(req.params.table, undefined);
    return result;
  };

/**
 * The query's embedding is a Gemini call the org pays for: its row is written beside the table reads (no round trip
 * added to the answer) and before the answer, so an answered search is a recorded one; a row that cannot be written
 * fails the search, as a failed read does.
 */
export const searchKnowledge =
  (deps: KnowledgeRouteDeps): Handler<{ body: typeof searchBody }> =>
  async (req) => {
    const { search, searchLedger } = deps;
    const { orgId } = principalOf(req);
    // The query's embedding is spend: an org over its monthly budget is refused before it, as its ingests are.
    await refuseOverBudget(deps, orgId);
    const hooks = searchLedger ? { onEmbedded: (e: SearchEmbedded) => searchLedger.record({ ...e, orgId, requestId: req.id }) } : {};
    return { results: await search.search({ ...req.body, orgId }, hooks) };
  };

/** Invalidates the org's result cache (and semantic cache) entries, all or one agent's, without KEYS. */
export const invalidateCache =
  ({ results, semantic }: KnowledgeRouteDeps): Handler<{ querystring: typeof cacheQuery }> =>
  async (req) => {
    const { orgId } = principalOf(req);
    const { agent } = req.query;
    // The semantic rows first, as after an ingest (reader-invalidation.ts).
    const semanticRemoved = await semantic.invalidate(orgId, agent);
    if (agent) await results.invalidateAgent(orgId, agent);
    else await results.invalidateOrg(orgId);
    return { invalidated: agent ? { orgId, agent } : { orgId }, semanticRemoved };
  };
