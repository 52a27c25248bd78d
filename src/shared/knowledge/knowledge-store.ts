import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import type { PriceOverrides } from '../core/config.js';
import { ValidationError } from '../core/errors.js';
import { createPricing } from '../infra/llm/pricing.js';
import { ingestRunInsert, type IngestRun } from '../infra/db/agent-runs.js';
import { estimateTextTokens } from '../queue/estimate-tokens.js';
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
  /** The HTTP request that ingests (its ledger rows' request_id). */
  requestId?: string;
  /**
   * The ingest these documents belong to, when one ingest writes them through several calls (the CLI streams its
   * file a batch per call): its id (`newIngestId`) and the ordinal of this call's first batch, so its rows are
   * batches of one ingest in the ledger. Unset: the call is an ingest of its own (an API request), batches from 1.
   */
  ingest?: { id: string; firstBatch: number };
}

/** A new ingest's id, the `job_id` of its ledger rows (one per API request, one per CLI run). */
export const newIngestId = (): string => `ingest:${randomUUID()}`;

/**
 * Where an org's ingestion records the embedding calls it pays for (agent_runs, migration 024): the embedding model
 * and its price. Gemini reports no usage for embeddings, so the tokens are estimated (~4 characters a token).
 */
export interface IngestLedger {
  model: string;
  costUsd(tokens: number): number;
  /** A batch's row committed with its documents (the API process's metrics count its estimated cost). */
  recorded?(run: IngestRun): void;
}

/** The ingest ledger of the embedding `model` at its price (PRICES_JSON applies as to every call): the API's and the CLI's. */
export function createIngestLedger(model: string, prices: PriceOverrides = {}): IngestLedger {
  const pricing = createPricing(prices);
  return { model, costUsd: (tokens) => pricing.cost(model, { input: tokens, output: 0 }).costUsd };
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

/**
 * Validates, embeds and upserts knowledge documents by their external id, in batches. With a `ledger`, each batch
 * of an org's rows records its embedding calls in agent_runs in the same statement that writes it (the org pays
 * for them: /v1/usage, the monthly budget). Shared rows (no org) are recorded nowhere: no org to bill.
 */
export function createKnowledgeStore({ pool, embed, ledger }: { pool: pg.Pool; embed: EmbedFn; ledger?: IngestLedger }) {
  return {
    async upsert(table: string, docs: unknown[], opts: UpsertOptions = {}): Promise<UpsertResult> {
      const valid = validateAll(table, docs, opts);
      const t = table as KnowledgeTable;
      const batchSize = Math.max(1, Math.floor(opts.batchSize ?? 100));
      const result: UpsertResult = { inserted: 0, updated: 0, skipped: 0, total: valid.length };
      // The org whose rows these are (industry_packs have none, whatever orgId says).
      const owner = TABLE_SQL[t].columns.includes('org_id') ? (opts.orgId ?? null) : null;
      // A batch is recorded under (ingest id, ordinal), ON CONFLICT DO NOTHING: a batch statement sent again records once.
      const ingestId = opts.ingest?.id ?? newIngestId();
      for (let start = 0, n = opts.ingest?.firstBatch ?? 1; start < valid.length; start += batchSize, n++) {
        const batch = valid.slice(start, start + batchSize);
        const texts = batch.map((d) => embeddingText(t, d));
        const began = performance.now();
        const vectors = await embedChecked(embed, texts);
        const tokens = texts.reduce((sum, text) => sum + estimateTextTokens(text), 0);
        const run: IngestRun | undefined =
          ledger && owner
            ? { ingestId, batch: n, orgId: owner, table: t, model: ledger.model, embeddingTokens: tokens, embeddingCostUsd: ledger.costUsd(tokens), durationMs: performance.now() - began, requestId: opts.requestId ?? null }
            : undefined;
        const counts = await writeBatch(pool, t, batch, vectors, opts.orgId ?? null, run);
        if (run) ledger?.recorded?.(run);
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

async function writeBatch(pool: pg.Pool, table: KnowledgeTable, docs: KnowledgeDoc[], vectors: number[][], orgId: string | null, run?: IngestRun) {
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
  const upsert = `INSERT INTO ${table} (${all.join(', ')}) VALUES ${tuples.join(', ')}
    ON CONFLICT ${conflict} DO UPDATE SET ${updates.map((c) => `${c} = EXCLUDED.${c}`).join(', ')}, updated_at = now()
    RETURNING (xmax = 0) AS inserted`;
  // One statement per batch: it is atomic on its own, so no transaction is held across the embed call. The batch's
  // ledger row is a data-modifying CTE of that statement (Postgres runs it whether or not the query reads it): the
  // documents and the record of what embedding them cost commit together, or neither does.
  const ledger = run ? ingestRunInsert(run, params.length + 1) : undefined;
  const sql = ledger ? `WITH written AS (${upsert}), ledger AS (${ledger.sql}) SELECT inserted FROM written` : upsert;
  const { rows } = await pool.query<{ inserted: boolean }>(sql, ledger ? [...params, ...ledger.params] : params);
  const inserted = rows.filter((r) => r.inserted).length;
  return { inserted, updated: rows.length - inserted, skipped: docs.length - rows.length };
}
