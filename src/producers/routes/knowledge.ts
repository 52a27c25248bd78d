import type { ResultCache } from '../../shared/cache/result-cache.js';
import type { SemanticCache } from '../../shared/cache/semantic-cache.js';
import { ValidationError } from '../../shared/core/errors.js';
import type { KnowledgeTable } from '../../shared/knowledge/knowledge-schemas.js';
import type { KnowledgeStore } from '../../shared/knowledge/knowledge-store.js';
import type { VectorSearch } from '../../shared/knowledge/vector-search.js';
import { principalOf } from '../auth.js';
import type { Handler } from '../route-spec.js';
import type { cacheQuery, ingestBody, orgTableParam, searchBody, sharedTableParam } from '../schemas/knowledge.js';

export interface KnowledgeRouteDeps {
  store: KnowledgeStore;
  search: VectorSearch;
  /** The result cache an org's answers are in (its queue shard's). */
  results: Pick<ResultCache, 'invalidateOrg' | 'invalidateAgent'>;
  semantic: SemanticCache;
}

/** Upserts documents; the store names a bad document's field from the document down (`documents.N.field`). */
async function ingest(store: KnowledgeStore, table: KnowledgeTable, documents: unknown[], orgId: string | undefined) {
  try {
    return await store.upsert(table, documents, { orgId });
  } catch (err) {
    if (err instanceof ValidationError) {
      throw new ValidationError(err.message, err.details.map((d) => ({ ...d, path: d.path === 'table' ? 'table' : `documents.${d.path}` })));
    }
    throw err;
  }
}

/** An org-admin writes its org's private rows (chat facts, its own playbooks): the org comes from the key. */
export const ingestOrgDocuments =
  ({ store }: KnowledgeRouteDeps): Handler<{ params: typeof orgTableParam; body: typeof ingestBody }> =>
  async (req) =>
    ingest(store, req.params.table, req.body.documents, principalOf(req).orgId);

/** Shared rows (no org) are returned by every org's searches, so only the operator writes them. */
export const ingestSharedDocuments =
  ({ store }: KnowledgeRouteDeps): Handler<{ params: typeof sharedTableParam; body: typeof ingestBody }> =>
  async (req) =>
    ingest(store, req.params.table, req.body.documents, undefined);

export const searchKnowledge =
  ({ search }: KnowledgeRouteDeps): Handler<{ body: typeof searchBody }> =>
  async (req) => {
    const { orgId } = principalOf(req);
    return { results: await search.search({ ...req.body, orgId }) };
  };

/** Invalidates the org's result cache (and semantic cache) entries, all or one agent's, without KEYS. */
export const invalidateCache =
  ({ results, semantic }: KnowledgeRouteDeps): Handler<{ querystring: typeof cacheQuery }> =>
  async (req) => {
    const { orgId } = principalOf(req);
    const { agent } = req.query;
    if (agent) await results.invalidateAgent(orgId, agent);
    else await results.invalidateOrg(orgId);
    const semanticRemoved = await semantic.invalidate(orgId, agent);
    return { invalidated: agent ? { orgId, agent } : { orgId }, semanticRemoved };
  };
