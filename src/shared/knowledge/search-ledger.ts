import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { searchRunInsert, type SearchRun } from '../infra/db/agent-runs.js';
import { estimateTextTokens } from '../queue/estimate-tokens.js';
import type { IngestLedger } from './knowledge-store.js';
import type { SearchEmbedded } from './vector-search.js';

/** What one search API call embedded, and for whom. */
export interface SearchRecord extends SearchEmbedded {
  orgId: string;
  requestId?: string | null;
}

/**
 * Where `POST /v1/knowledge/search` records the query embedding the org pays for (agent_runs, kind `search`,
 * migration 025), at the embedding model's price (`price`, the ingest ledger's). Gemini reports no usage for
 * embeddings: the tokens are estimated (~4 characters a token) and the row says so, as an ingest's. `onRecorded`: the
 * row committed (the API process's metrics).
 */
export function createSearchLedger({ pool, price, onRecorded }: { pool: pg.Pool; price: IngestLedger; onRecorded?: (run: SearchRun) => void }) {
  return {
    async record(e: SearchRecord): Promise<SearchRun> {
      const tokens = e.texts.reduce((sum, text) => sum + estimateTextTokens(text), 0);
      const run: SearchRun = {
        searchId: `search:${randomUUID()}`,
        orgId: e.orgId,
        model: price.model,
        embeddingTokens: tokens,
        embeddingCostUsd: price.costUsd(tokens),
        durationMs: e.durationMs,
        requestId: e.requestId ?? null,
      };
      const { sql, params } = searchRunInsert(run);
      await pool.query(sql, params);
      onRecorded?.(run);
      return run;
    },
  };
}

export type SearchLedger = ReturnType<typeof createSearchLedger>;
