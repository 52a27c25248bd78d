import type { ResultCache } from '../../shared/cache/result-cache.js';
import type { SemanticCache } from '../../shared/cache/semantic-cache.js';
import { ValidationError } from '../../shared/core/errors.js';
import type { KnowledgeStore } from '../../shared/knowledge/knowledge-store.js';
import type { VectorSearch } from '../../shared/knowledge/vector-search.js';
import { principalOf } from '../auth.js';
import { HttpError } from '../http-errors.js';
import type { Handler } from '../route-spec.js';
import type { cacheQuery, ingestBody, ingestQuery, searchBody, tableParam } from '../schemas/knowledge.js';

export interface KnowledgeRouteDeps {
  store: KnowledgeStore;
  search: VectorSearch;
  results: ResultCache;
  semantic: SemanticCache;
}

/**
 * Industry packs and global playbooks are shared by every tenant, so only admin keys may write them;
 * members write their own org's chat facts and private playbooks.
 */
export const ingestDocuments =
  ({ store }: KnowledgeRouteDeps): Handler<{ params: typeof tableParam; querystring: typeof ingestQuery; body: typeof ingestBody }> =>
  async (req) => {
    const { orgId, role } = principalOf(req);
    const { table } = req.params;
    const global = table === 'industry_packs' || (table === 'playbooks' && req.query.scope === 'global');
    if (global && role !== 'admin') throw new HttpError(403, `writing shared ${table} needs an admin key`);
    try {
      return await store.upsert(table, req.body.documents, { orgId: global ? undefined : orgId });
    } catch (err) {
      // The store checks each document against its table's schema and names it from the document down.
      if (err instanceof ValidationError) {
        throw new ValidationError(err.message, err.details.map((d) => ({ ...d, path: d.path === 'table' ? 'table' : `documents.${d.path}` })));
      }
      throw err;
    }
  };

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
