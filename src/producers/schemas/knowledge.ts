import { z } from 'zod';
import { docSchemas, KNOWLEDGE_TABLES, type KnowledgeTable } from '../../shared/knowledge/knowledge-schemas.js';

/** Tables with rows private to an org (its org-admin writes them); `industry_packs` is shared only. */
export const ORG_TABLES = ['playbooks', 'chat_facts'] as const satisfies readonly KnowledgeTable[];
/** Tables with rows every org's searches return (the operator writes them); chat facts are never shared. */
export const SHARED_TABLES = ['industry_packs', 'playbooks'] as const satisfies readonly KnowledgeTable[];

export const orgTableParam = z.object({
  table: z.enum(ORG_TABLES, { error: 'one of playbooks, chat_facts (shared tables are written by the operator at /admin/knowledge/:table)' }),
});
export const sharedTableParam = z.object({ table: z.enum(SHARED_TABLES, { error: 'one of industry_packs, playbooks (an org’s own rows are written at /v1/knowledge/:table)' }) });

/** Each document is checked against its table's schema by the store (paths `documents.N.field`); here, documented. */
const documentSchemas = Object.values(docSchemas).map((s) => {
  const { $schema: _omit, ...json } = z.toJSONSchema(s, { io: 'input', target: 'draft-2020-12' });
  return json;
});
const document = z.record(z.string(), z.unknown()).meta({ description: 'A document of the table named in the path, upserted by external_id', anyOf: documentSchemas });

export const ingestBody = z.object({ documents: z.array(document).min(1).max(1000) }).strict();
export const ingestResult = z.looseObject({ inserted: z.number(), updated: z.number(), skipped: z.number() });

export const searchBody = z
  .object({
    query: z.string().min(1).max(2000),
    tables: z.array(z.enum(KNOWLEDGE_TABLES)).min(1).optional(),
    limit: z.number().int().min(1).max(50).optional(),
    threshold: z.number().min(0).max(1).optional(),
    filters: z.object({ startup_id: z.string().max(200).optional() }).strict().optional(),
  })
  .strict();
export const searchResult = z.object({
  results: z.array(z.looseObject({ table: z.string(), id: z.string(), content: z.string(), similarity: z.number(), metadata: z.record(z.string(), z.unknown()) })),
});

export const cacheQuery = z.object({ agent: z.string().min(1).max(100).optional() }).strict();
export const cacheInvalidated = z.looseObject({ invalidated: z.looseObject({ orgId: z.string(), agent: z.string().optional() }), semanticRemoved: z.number() });
