import type pg from 'pg';
import { ValidationError } from '../core/errors.js';
import { embedChecked, toVectorParam, type EmbedFn } from './embedding.js';
import { checkDoc, embeddingText, isKnowledgeTable, KNOWLEDGE_TABLES, type KnowledgeDoc, type KnowledgeTable } from './knowledge-schemas.js';

export interface UpsertResult {
  inserted: number;
  updated: number;
  /** Documents not written. None since an external id is unique within its scope only (migration 021): kept for the answer's shape. */
  skipped: number;
  total: number;
}

export interface UpsertOptions {
  /** Required for chat_facts; for playbooks it makes them org-private (unset = global); ignored for packs. */
  orgId?: string;
  batchSize?: number;
  onProgress?: (p: { done: number; total: number }) => void;
}

// Per table: the columns written besides embedding, and the conflict target. Fixed text, never input.
const TABLE_SQL: Record<KnowledgeTable, { columns: string[]; conflict: string }> = {
  industry_packs: { columns: ['external_id', 'industry', 'display_name', 'description', 'is_active'], conflict: '(external_id)' },
  // Unique per scope, the shared rows (org_id NULL) being one scope: migration 021's NULLS NOT DISTINCT.
  playbooks: { columns: ['external_id', 'org_id', 'title', 'description', 'type', 'difficulty', 'is_active'], conflict: '(org_id, external_id)' },
  chat_facts: {
    columns: ['external_id', 'org_id', 'startup_id', 'content', 'fact_type', 'confidence', 'expires_at'],
    conflict: '(org_id, external_id)',
  },
};

/** Validates, embeds and upserts knowledge documents by their external id, in batches. */
export function createKnowledgeStore({ pool, embed }: { pool: pg.Pool; embed: EmbedFn }) {
  return {
    async upsert(table: string, docs: unknown[], opts: UpsertOptions = {}): Promise<UpsertResult> {
      const valid = validateAll(table, docs, opts);
      const t = table as KnowledgeTable;
      const batchSize = Math.max(1, Math.floor(opts.batchSize ?? 100));
      const result: UpsertResult = { inserted: 0, updated: 0, skipped: 0, total: valid.length };
      for (let start = 0; start < valid.length; start += batchSize) {
        const batch = valid.slice(start, start + batchSize);
        const vectors = await embedChecked(embed, batch.map((d) => embeddingText(t, d)));
        const counts = await writeBatch(pool, t, batch, vectors, opts.orgId ?? null);
        result.inserted += counts.inserted;
        result.updated += counts.updated;
        result.skipped += counts.skipped;
        opts.onProgress?.({ done: start + batch.length, total: valid.length });
      }
      return result;
    },
  };
}

export type KnowledgeStore = ReturnType<typeof createKnowledgeStore>;

/** Everything is checked before the first embedding call, so a bad document writes nothing. */
function validateAll(table: string, docs: unknown[], opts: UpsertOptions): KnowledgeDoc[] {
  if (!isKnowledgeTable(table)) {
    throw new ValidationError(`unknown table "${table}"`, [{ path: 'table', message: `must be one of ${KNOWLEDGE_TABLES.join(', ')}` }]);
  }
  if (!Array.isArray(docs)) throw new ValidationError('docs must be an array');
  if (table === 'chat_facts' && !opts.orgId) {
    throw new ValidationError('chat_facts belong to an org: orgId is required', [{ path: 'orgId', message: 'required' }]);
  }
  const details: Array<{ path: string; message: string }> = [];
  const valid: KnowledgeDoc[] = [];
  const seen = new Map<string, number>();
  docs.forEach((raw, i) => {
    const res = checkDoc(table, raw);
    if (!res.ok) {
      for (const issue of res.issues) details.push({ path: `${i}.${issue.path}`, message: issue.message });
      return;
    }
    const first = seen.get(res.doc.external_id);
    if (first !== undefined) details.push({ path: `${i}.external_id`, message: `duplicates document ${first}` });
    seen.set(res.doc.external_id, i);
    valid.push(res.doc);
  });
  if (details.length) {
    const shown = details.slice(0, 5).map((d) => `${d.path}: ${d.message}`).join('; ');
    throw new ValidationError(`${details.length} invalid document field(s): ${shown}`, details);
  }
  return valid;
}

async function writeBatch(pool: pg.Pool, table: KnowledgeTable, docs: KnowledgeDoc[], vectors: number[][], orgId: string | null) {
  const { columns, conflict } = TABLE_SQL[table];
  const params: unknown[] = [];
  const tuples = docs.map((doc, i) => {
    const values = columns.map((c) => {
      params.push(c === 'org_id' ? orgId : ((doc as Record<string, unknown>)[c] ?? null));
      return `$${params.length}`;
    });
    params.push(toVectorParam(vectors[i]));
    values.push(`$${params.length}::vector`);
    return `(${values.join(', ')})`;
  });
  const all = [...columns, 'embedding'];
  const updates = all.filter((c) => c !== 'external_id' && c !== 'org_id');
  // One statement per batch: it is atomic on its own, so no transaction is held across the embed call.
  const sql = `INSERT INTO ${table} (${all.join(', ')}) VALUES ${tuples.join(', ')}
    ON CONFLICT ${conflict} DO UPDATE SET ${updates.map((c) => `${c} = EXCLUDED.${c}`).join(', ')}, updated_at = now()
    RETURNING (xmax = 0) AS inserted`;
  const { rows } = await pool.query<{ inserted: boolean }>(sql, params);
  const inserted = rows.filter((r) => r.inserted).length;
  return { inserted, updated: rows.length - inserted, skipped: docs.length - rows.length };
}
