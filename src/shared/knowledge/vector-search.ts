import type pg from 'pg';
import { ValidationError } from '../core/errors.js';
import { embedChecked, toVectorParam, type EmbedFn } from './embedding.js';
import { isKnowledgeTable, KNOWLEDGE_TABLES, NUL_REFUSED, type KnowledgeTable } from './knowledge-schemas.js';

export interface SearchResult {
  table: KnowledgeTable;
  id: string;
  content: string;
  similarity: number;
  metadata: Record<string, unknown>;
}

export interface SearchOptions {
  query: string;
  orgId: string;
  tables?: readonly string[];
  limit?: number;
  /** Minimum cosine similarity, -1..1. */
  threshold?: number;
  /** Equality filters passed to match_documents; each table uses the keys it knows (e.g. startup_id for chat_facts). */
  filters?: Record<string, string>;
}

/** The minimum cosine similarity of a search that names none. */
export const DEFAULT_SEARCH_THRESHOLD = 0.7;

/** The embedding call a search made, for its caller to record (the search API's ledger row). */
export interface SearchEmbedded {
  texts: string[];
  durationMs: number;
}

/**
 * Embeds the query once and merges match_documents over the requested tables, best first. `onEmbedded` (the
 * search API's ledger) runs once the query is embedded, beside the table reads, and the search answers once it
 * has settled too: its failure fails the search, as a read's does.
 */
export function createVectorSearch({ pool, embed }: { pool: pg.Pool; embed: EmbedFn }) {
  return {
    async search(opts: SearchOptions, hooks: { onEmbedded?: (e: SearchEmbedded) => Promise<unknown> } = {}): Promise<SearchResult[]> {
      const { tables, limit, threshold } = validate(opts);
      const began = performance.now();
      const [vector] = await embedChecked(embed, [opts.query]);
      const recorded = hooks.onEmbedded?.({ texts: [opts.query], durationMs: performance.now() - began });
      const qv = toVectorParam(vector);
      const filter = opts.filters && Object.keys(opts.filters).length ? JSON.stringify(opts.filters) : null;
      // The record beside the reads: it costs the answer no round trip of its own (one insert on another connection).
      const reads = Promise.all(
        tables.map(async (table) => {
          const { rows } = await pool.query<{ id: string; content: string; similarity: number; metadata: Record<string, unknown> }>(
            'SELECT id, content, similarity, metadata FROM match_documents($1::vector, $2, $3, $4, $5, $6::jsonb)',
            [qv, table, opts.orgId, threshold, limit, filter],
          );
          return rows.map((r) => ({ table, id: r.id, content: r.content, similarity: Number(r.similarity), metadata: r.metadata }));
        }),
      );
      const [perTable] = await Promise.all([reads, recorded]);
      return perTable
        .flat()
        .sort((a, b) => b.similarity - a.similarity)
        .slice(0, limit);
    },
  };
}

export type VectorSearch = ReturnType<typeof createVectorSearch>;

function validate(opts: SearchOptions): { tables: KnowledgeTable[]; limit: number; threshold: number } {
  const details: Array<{ path: string; message: string }> = [];
  if (typeof opts.query !== 'string' || !opts.query.trim()) details.push({ path: 'query', message: 'must be a non-empty string' });
  if (typeof opts.orgId !== 'string' || !opts.orgId) details.push({ path: 'orgId', message: 'required' });
  const tables = [...new Set(opts.tables ?? KNOWLEDGE_TABLES)];
  tables.forEach((t, i) => {
    if (!isKnowledgeTable(t)) details.push({ path: `tables.${i}`, message: `unknown table "${t}"; expected one of ${KNOWLEDGE_TABLES.join(', ')}` });
  });
  if (tables.length === 0) details.push({ path: 'tables', message: 'must name at least one table' });
  const limit = opts.limit ?? 10;
  if (!Number.isInteger(limit) || limit < 1 || limit > 100) details.push({ path: 'limit', message: 'must be an integer 1..100' });
  const threshold = opts.threshold ?? DEFAULT_SEARCH_THRESHOLD;
  if (typeof threshold !== 'number' || !(threshold >= -1 && threshold <= 1)) details.push({ path: 'threshold', message: 'must be a number -1..1' });
  if (opts.filters !== undefined) {
    for (const [k, v] of Object.entries(opts.filters)) {
      if (typeof v !== 'string') details.push({ path: `filters.${k}`, message: 'must be a string' });
      // Filters go to SQL as jsonb, which refuses a NUL (an agent's filter from job input would fail every retry).
      else if (v.includes('\u0000')) details.push({ path: `filters.${k}`, message: NUL_REFUSED });
    }
  }
  if (details.length) throw new ValidationError(`invalid search: ${details.map((d) => `${d.path} ${d.message}`).join('; ')}`, details);
  return { tables: tables as KnowledgeTable[], limit, threshold };
}
