import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import type { ResultCache } from '../../shared/cache/result-cache.js';
import type { SemanticCache } from '../../shared/cache/semantic-cache.js';
import { ValidationError } from '../../shared/core/errors.js';
import { zodDetails } from '../../shared/core/zod-details.js';
import type { KnowledgeStore } from '../../shared/knowledge/knowledge-store.js';
import { KNOWLEDGE_TABLES } from '../../shared/knowledge/knowledge-schemas.js';
import type { VectorSearch } from '../../shared/knowledge/vector-search.js';
import { principalOf } from '../auth.js';
import { HttpError } from '../http-errors.js';

const tableParam = z.object({ table: z.string().max(100) });
const ingestBody = z.object({ documents: z.array(z.unknown()).min(1).max(1000) }).strict();
const ingestQuery = z.object({ scope: z.enum(['org', 'global']).default('org') }).strict();
const searchBody = z
  .object({
    query: z.string().min(1).max(2000),
    tables: z.array(z.enum(KNOWLEDGE_TABLES)).min(1).optional(),
    limit: z.number().int().min(1).max(50).optional(),
    threshold: z.number().min(0).max(1).optional(),
    filters: z.object({ startup_id: z.string().max(200).optional() }).strict().optional(),
  })
  .strict();
const cacheQuery = z.object({ agent: z.string().min(1).max(100).optional() }).strict();

function parse<T extends z.ZodType>(schema: T, value: unknown, prefix = ''): z.infer<T> {
  const r = schema.safeParse(value);
  if (!r.success) throw new ValidationError('invalid request', zodDetails(r.error, prefix));
  return r.data;
}

export interface KnowledgeRouteDeps {
  store: KnowledgeStore;
  search: VectorSearch;
  results: ResultCache;
  semantic: SemanticCache;
}

/**
 * Knowledge ingestion and retrieval for RAG, and cache invalidation, over HTTP. Industry packs and
 * global playbooks are shared by every tenant, so only admin keys may write them; members write their
 * own org's chat facts and private playbooks.
 */
export function knowledgeRoutes(app: FastifyInstance, { store, search, results, semantic }: KnowledgeRouteDeps) {
  app.post('/v1/knowledge/:table', async (req) => {
    const { orgId, role } = principalOf(req);
    const { table } = parse(tableParam, req.params);
    const { scope } = parse(ingestQuery, req.query, 'query.');
    const { documents } = parse(ingestBody, req.body);
    const global = table === 'industry_packs' || (table === 'playbooks' && scope === 'global');
    if (global && role !== 'admin') throw new HttpError(403, `writing shared ${table} needs an admin key`);
    try {
      return await store.upsert(table, documents, { orgId: global ? undefined : orgId });
    } catch (err) {
      if (err instanceof ValidationError) {
        throw new ValidationError(err.message, err.details.map((d) => ({ ...d, path: d.path === 'table' ? 'table' : `documents.${d.path}` })));
      }
      throw err;
    }
  });

  app.post('/v1/knowledge/search', async (req) => {
    const { orgId } = principalOf(req);
    const body = parse(searchBody, req.body);
    return { results: await search.search({ ...body, orgId }) };
  });

  /** Invalidates the org's result cache (and semantic cache) entries, all or one agent's, without KEYS. */
  app.delete('/v1/cache', async (req) => {
    const { orgId } = principalOf(req);
    const { agent } = parse(cacheQuery, req.query, 'query.');
    if (agent) await results.invalidateAgent(orgId, agent);
    else await results.invalidateOrg(orgId);
    const semanticRemoved = await semantic.invalidate(orgId, agent);
    return { invalidated: agent ? { orgId, agent } : { orgId }, semanticRemoved };
  });
}
