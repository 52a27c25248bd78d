import type pg from 'pg';
import type { CacheLevel, ServiceTier } from '../../core/types.js';
import { storableText } from './pg-content.js';

/**
 * One finished attempt of one job, or one delayed part of an attempt: the calls a run of the attempt paid for
 * before it was delayed (rescheduled without using an attempt, so the attempt runs again under the same number).
 */
export interface AgentRun {
  jobId: string;
  /**
   * The job's creation time, ms (BullMQ's `timestamp`; 0 when unknown): with the id, which job this is. An
   * idempotency key sent again after its job was removed makes a new job under the same id, whose attempts are
   * rows of their own (migration 018); every attempt and re-delivery of one job carries the same value.
   */
  jobTs?: number;
  attempt: number;
  /**
   * '' (the default): the attempt's own row, written when it ends. A delayed part's row (state `delayed`) has an
   * id of its own, made once when the row is built and carried in the usage stream entry (migration 022): a
   * redelivered entry is the same row, and the attempt's own row, written when it ends, is another. A run that
   * BullMQ's stalled check handed out again (the same attempt run, and paid, once more) ends it under
   * `stalledRunPart` (migration 026): a row beside the first run's, not a duplicate of it.
   */
  part?: string;
  orgId: string;
  agent: string;
  action: string;
  model: string;
  state: 'completed' | 'failed' | 'delayed';
  inputTokens: number;
  outputTokens: number;
  costUsd: number;
  durationMs: number;
  cacheHit?: CacheLevel | null;
  error?: string | null;
  requestId?: string | null;
  /** Cost ledger (migration 011): the tier billed, cached and thinking tokens, the same tokens at standard price. */
  tier?: ServiceTier;
  cachedTokens?: number;
  thoughtsTokens?: number;
  standardCostUsd?: number | null;
  /**
   * Embedding calls the attempt made (semantic cache, knowledge search; migration 023). Gemini reports no usage for
   * them: `embeddingTokens` is estimated locally, `embeddingEstimated` says so, `embeddingCostUsd` is at the
   * embedding model's input price. Not in `costUsd`, which is what Gemini billed the model calls.
   */
  embeddingTokens?: number;
  embeddingCostUsd?: number;
  embeddingEstimated?: boolean;
  /**
   * The model the embedding calls were made with (migration 028), so the ledger's model split keeps it when
   * GEMINI_EMBEDDING_MODEL changes. Absent (rows written before, rows with no embedding call): the configured one.
   */
  embeddingModel?: string;
  /** Defaults to now(); set by backfills and tests. */
  createdAt?: Date;
}

/**
 * The part of the row a run writes when it ends its attempt: '' for a run fetched before any stall of the job, else
 * `stalled:<n>`, n being BullMQ's count of the job's stalls (`stalledCounter`) at the run's fetch. Runs of one attempt
 * that both end it are told apart by it: the later one was fetched after the stalled check moved the job back to the
 * wait list, which counted one more stall (a delayed run ends nothing: it writes only its delayed part).
 */
export function stalledRunPart(stalledCounter: number | undefined): string {
  return stalledCounter ? `stalled:${stalledCounter}` : '';
}

/**
 * The part of the row of the calls a run served its batch's stored answer made after it (a route's retry or
 * fallback, on the standard tier; migration 027): `standard:<n>`, n being the job's `stalledCounter` at the run's
 * fetch (0 for a run fetched before any stall), so each run that ends the attempt has its own such row while the
 * answer itself stays in the attempt's row, ''. Such a row is no attempt: `usage()` leaves it out of durations and
 * the cache hit rate.
 */
export function afterBatchPart(stalledCounter: number | undefined): string {
  return `standard:${stalledCounter ?? 0}`;
}

/** `org` and `total` (one row, key `total`) serve the operator's dashboard; `/v1/usage` offers the first three. */
export type UsageGroupBy = 'agent' | 'model' | 'day' | 'tier' | 'org' | 'total';

export interface UsageRow {
  /** Agent name, model name, org id, the UTC day as YYYY-MM-DD, or `total`. */
  key: string;
  /** Distinct jobs with at least one recorded row (an attempt, or a delayed part of one) in the window. */
  jobs: number;
  inputTokens: number;
  outputTokens: number;
  costUsd: number;
  cachedTokens: number;
  thoughtsTokens: number;
  /** What the same tokens cost on the standard tier; `standardCostUsd - costUsd` is what the tiers saved. */
  standardCostUsd: number;
  /**
   * Embedding calls (semantic cache, knowledge search, knowledge ingestion and the search API): tokens ESTIMATED locally, priced at
   * the embedding model's price.
   */
  embeddingTokens: number;
  embeddingCostUsd: number;
  /** The part of `embeddingTokens` / `embeddingCostUsd` that knowledge ingestion made (rows of kind `ingest`, migration 024). */
  ingestEmbeddingTokens: number;
  ingestEmbeddingCostUsd: number;
  /** The part that `POST /v1/knowledge/search` made (rows of kind `search`, migration 025). */
  searchEmbeddingTokens: number;
  searchEmbeddingCostUsd: number;
  /** Share of completed attempts served from a cache. */
  cacheHitRate: number;
  /** Of the attempts' durations: a delayed part is no attempt. */
  p50Ms: number;
  p95Ms: number;
}

/**
 * One written batch of an org's knowledge ingestion (migration 024): the embedding calls that embedded its documents,
 * recorded as a row of kind `ingest`. Gemini reports no usage for embeddings: the tokens are estimated, like an
 * attempt's (migration 023).
 */
export interface IngestRun {
  /** One per ingest (`ingest:<uuid>`: an API request, a CLI run): its batches are rows `batch` 1, 2, ... of it. */
  ingestId: string;
  batch: number;
  orgId: string;
  table: string;
  /** The embedding model, as `model` of the row (`/v1/usage?groupBy=model` shows it). */
  model: string;
  embeddingTokens: number;
  embeddingCostUsd: number;
  durationMs: number;
  requestId?: string | null;
}

/** The agent an ingest row is shown under (`/v1/usage` groups by agent); its action is `ingest:<table>`. */
export const INGEST_AGENT = 'knowledge';

/**
 * The INSERT of an ingest batch's row, for a data-modifying CTE of the statement that writes the batch's documents
 * (knowledge-store.ts), so both commit or neither does; its parameters are numbered from `$first`. A statement
 * sent again (a retry after a lost answer) records the row once: the documents' upsert is idempotent, so is this.
 */
export function ingestRunInsert(r: IngestRun, first: number): { sql: string; params: unknown[] } {
  const params: unknown[] = [
    r.ingestId,
    r.batch,
    r.orgId,
    INGEST_AGENT,
    `ingest:${r.table}`,
    r.model,
    Math.round(r.durationMs),
    storableText(r.requestId),
    Math.round(r.embeddingTokens),
    r.embeddingCostUsd,
  ];
  const $ = (i: number) => `$${first + i}`;
  // cost_usd 0: Gemini billed these calls nothing it reported (no usage metadata); their estimate is beside it.
  const sql = `INSERT INTO agent_runs (job_id, attempt, org_id, agent, action, model, state, duration_ms, request_id,
                                       embedding_tokens, embedding_cost_usd, embedding_estimated, kind)
     VALUES (${$(0)}, ${$(1)}, ${$(2)}, ${$(3)}, ${$(4)}, ${$(5)}, 'completed', ${$(6)}, ${$(7)}, ${$(8)}, ${$(9)}, true, 'ingest')
     ON CONFLICT (job_id, job_ts, attempt, part) DO NOTHING`;
  return { sql, params };
}

/**
 * One `POST /v1/knowledge/search` of an org (migration 025): the embedding call that embedded its query, recorded as a
 * row of kind `search`. Gemini reports no usage for embeddings: the tokens are estimated, like an ingest's.
 */
export interface SearchRun {
  /** `search:<uuid>`, one per search. */
  searchId: string;
  orgId: string;
  /** The embedding model, as `model` of the row. */
  model: string;
  embeddingTokens: number;
  embeddingCostUsd: number;
  /** The embedding call's. */
  durationMs: number;
  requestId?: string | null;
}

/** The action of a search row (agent `INGEST_AGENT`, `knowledge`, as an ingest's). */
export const SEARCH_ACTION = 'search';

/** The INSERT of a search's row (one statement; ON CONFLICT keeps a re-sent statement to one row). */
export function searchRunInsert(r: SearchRun): { sql: string; params: unknown[] } {
  const params: unknown[] = [
    r.searchId,
    r.orgId,
    INGEST_AGENT,
    SEARCH_ACTION,
    r.model,
    Math.round(r.durationMs),
    storableText(r.requestId),
    Math.round(r.embeddingTokens),
    r.embeddingCostUsd,
  ];
  // cost_usd 0, as an ingest row's: Gemini reported nothing for the call; its estimate is beside it.
  const sql = `INSERT INTO agent_runs (job_id, attempt, org_id, agent, action, model, state, duration_ms, request_id,
                                       embedding_tokens, embedding_cost_usd, embedding_estimated, kind)
     VALUES ($1, 1, $2, $3, $4, $5, 'completed', $6, $7, $8, $9, true, 'search')
     ON CONFLICT (job_id, job_ts, attempt, part) DO NOTHING`;
  return { sql, params };
}

// Fixed SQL per grouping: the caller's choice never reaches the query text.
const GROUP_EXPR: Record<UsageGroupBy, string> = {
  agent: 'agent',
  model: 'model',
  day: "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
  org: 'org_id',
  total: "'total'",
  tier: 'tier',
};

/**
 * An attempt's row that holds its run's embedding calls and nothing else, and describes no attempt of its own: a run
 * delayed after a semantic-cache lookup or a knowledge search with no model call paid, or a run served its batch
 * answer that called no model after it (its `standard:<n>` row then holds its embedding calls alone); model
 * columns 0. Its job is then the embedding model's and the standard tier's in `EMBEDDING_SPLIT_SOURCE`, the only
 * spend the row has.
 */
const EMBEDDING_ONLY = `((state = 'delayed' OR part LIKE 'standard:%') AND input_tokens = 0 AND output_tokens = 0 AND cost_usd = 0 AND embedding_tokens > 0)`;

/**
 * The rows `groupBy: 'model'` and `groupBy: 'tier'` read: an attempt's row split in two. Its model calls stay under
 * its model and tier; its embedding calls (semantic cache, knowledge search; migration 023) go under the embedding
 * model the row names (migration 028; `$4`, the configured one, for a row written before) at the standard tier, as an ingest's and a search's rows are: they are priced at the embedding
 * model's standard online price (`embeddingCost` in worker-service.ts), whatever tier the chat call used. So a
 * model's group holds what was paid to that model, and a tier's what was paid at that tier. Before, a run delayed
 * after a semantic-cache lookup with no model call showed its embedding as the job's chat model's spend, and a
 * batch-tier attempt's embedding calls as batch spend. The embedding half is no job (kind 'embedding': no job count,
 * cache hit rate or duration), except the half of a row that holds nothing else (`EMBEDDING_ONLY`): such a row
 * has no model half (it paid its chat model nothing), and its job counts in the embedding model's group and the
 * standard tier's, as a job counts in each group it has spend in (until 2026-12-07 it counted under the chat model
 * and tier it paid nothing). The split is made when read, so rows written before it are read the same way.
 */
const EMBEDDING_SPLIT_SOURCE = `(
  SELECT model, tier, org_id, created_at, job_id, job_ts, kind, part, state, cache_hit, duration_ms, input_tokens, output_tokens,
         cost_usd, cached_tokens, thoughts_tokens, standard_cost_usd,
         CASE WHEN kind = 'attempt' THEN 0 ELSE embedding_tokens END AS embedding_tokens,
         CASE WHEN kind = 'attempt' THEN 0 ELSE embedding_cost_usd END AS embedding_cost_usd
  FROM agent_runs WHERE NOT (kind = 'attempt' AND ${EMBEDDING_ONLY})
  UNION ALL
  SELECT COALESCE(embedding_model, $4::text), 'standard', org_id, created_at, job_id, job_ts, CASE WHEN ${EMBEDDING_ONLY} THEN 'attempt' ELSE 'embedding' END,
         part, state, NULL, 0, 0, 0, 0, 0, 0, 0, embedding_tokens, embedding_cost_usd
  FROM agent_runs WHERE kind = 'attempt' AND embedding_tokens > 0
) AS agent_runs`;

/** The groupings that read `EMBEDDING_SPLIT_SOURCE`; the others keep each row whole (the same sums either way). */
const SPLIT_GROUPINGS: ReadonlySet<UsageGroupBy> = new Set<UsageGroupBy>(['model', 'tier']);

/**
 * `GEMINI_EMBEDDING_MODEL`'s default (config.ts): the model an attempt's embedding calls are shown under when its
 * row names none (written before migration 028).
 */
const DEFAULT_EMBEDDING_MODEL = 'gemini-embedding-001';

/** The counts `recordMany` rounds (`Math.round`): integer columns, which take no fraction. */
const COUNT_FIELDS = ['inputTokens', 'outputTokens', 'durationMs', 'cachedTokens', 'thoughtsTokens', 'jobTs', 'embeddingTokens'] as const;

/**
 * `AgentRun`'s fields, as its JSON names them, to their columns, with the defaults `??` gave them when rows were sent
 * decoded (`created_at` now() when the row has none). A count that is null (JSON's NaN) is 0, as `Math.round(null)`
 * made it; so is an absent one, which JSON's reading here cannot tell from null (an absent `inputTokens`,
 * `outputTokens` or `durationMs`, which the type forbids, was NaN and its row refused). A key the row lacks is NULL, so the ON CONFLICT key's `job_ts` and `part` get their defaults as
 * before; keys the statement does not name are ignored. Counts are read as integers: a fraction is rounded in JS
 * first (`storableRowJson`), as rounding every count in SQL (numeric) cost Postgres more than the arrays did. The
 * worker leaves out of a row's JSON the optional fields that hold the default given here (`STORED_WHEN_ABSENT` in
 * run-stream.ts): a default changed here changes there too (`test/agent-runs-encoded.test.ts` compares the two).
 */
const ENCODED_ROWS_INSERT = `INSERT INTO agent_runs (job_id, attempt, org_id, agent, action, model, state, input_tokens, output_tokens,
                                 cost_usd, duration_ms, cache_hit, error, request_id, created_at,
                                 tier, cached_tokens, thoughts_tokens, standard_cost_usd, job_ts, part,
                                 embedding_tokens, embedding_cost_usd, embedding_estimated, embedding_model)
   SELECT "jobId", attempt, "orgId", agent, action, model, state, COALESCE("inputTokens", 0), COALESCE("outputTokens", 0),
          "costUsd", COALESCE("durationMs", 0), "cacheHit", error, "requestId", COALESCE("createdAt", now()),
          COALESCE(tier, 'standard'), COALESCE("cachedTokens", 0), COALESCE("thoughtsTokens", 0),
          COALESCE("standardCostUsd", "costUsd"), COALESCE("jobTs", 0), COALESCE(part, ''), COALESCE("embeddingTokens", 0),
          COALESCE("embeddingCostUsd", 0), COALESCE("embeddingEstimated", false), "embeddingModel"
   FROM json_to_recordset($1::json) AS t("jobId" text, attempt int, "orgId" text, agent text, action text, model text, state text,
          "inputTokens" int, "outputTokens" int, "costUsd" numeric, "durationMs" int, "cacheHit" text, error text,
          "requestId" text, "createdAt" timestamptz, tier text, "cachedTokens" int, "thoughtsTokens" int,
          "standardCostUsd" numeric, "jobTs" bigint, part text, "embeddingTokens" int, "embeddingCostUsd" numeric,
          "embeddingEstimated" boolean, "embeddingModel" text)
   ON CONFLICT (job_id, job_ts, attempt, part) DO NOTHING`;

/** A count written with a fraction or an exponent (JSON.stringify's forms of a number that is no safe integer). */
const FRACTIONAL_COUNT = new RegExp(`"(?:${COUNT_FIELDS.join('|')})":-?\\d+[.e]`);

/**
 * A row's JSON as Postgres stores it as it stored the row sent decoded. JSON.stringify writes `\u` only for control
 * characters and lone surrogates; Postgres's JSON refuses a `\u0000` and a lone surrogate, which were stored as
 * U+FFFD (an error's or request id's NUL by `storableText`, a lone surrogate by pg's UTF-8 encoding). A count with a
 * fraction was rounded (`Math.round`). Almost every row is sent untouched; such a row is decoded, made so, and encoded
 * again. A row that does not parse is sent as it is: Postgres refuses it (SQLSTATE 22P02).
 */
function storableRowJson(json: string): string {
  if (!json.includes('\\u') && !FRACTIONAL_COUNT.test(json)) return json;
  let row: Record<string, unknown>;
  try {
    row = JSON.parse(json) as Record<string, unknown>;
  } catch {
    return json;
  }
  if (row === null || typeof row !== 'object') return json;
  for (const [k, v] of Object.entries(row)) if (typeof v === 'string') row[k] = v.toWellFormed();
  if (typeof row.error === 'string') row.error = storableText(row.error);
  if (typeof row.requestId === 'string') row.requestId = storableText(row.requestId);
  for (const k of COUNT_FIELDS) if (typeof row[k] === 'number') row[k] = Math.round(row[k]);
  return JSON.stringify(row);
}

/**
 * The `agent_runs` store. An attempt's error message may carry a NUL (an upstream body, a quoted model output):
 * stored as U+FFFD (storableText), since a row Postgres refuses would fail its whole usage-sink batch and hold
 * back every org's rows. `embeddingModel`: the model `usage({ groupBy: 'model' })` shows attempts' embedding calls
 * under when their row names none (`AgentRun.embeddingModel`: rows written before migration 028).
 */
export function createRunStore({ pool, embeddingModel = DEFAULT_EMBEDDING_MODEL }: { pool: pg.Pool; embeddingModel?: string }) {
  /**
   * `recordMany` for rows as JSON (`encodeRun`'s, the usage stream's entries), each a whole object: sent as they
   * are, one parameter, which Postgres reads (`ENCODED_ROWS_INSERT`). Decoding each row and sending it as 25
   * arrays cost the sink twice the CPU (11.5 vs 5.7 us a row in 100-row batches, most of it JSON.parse and pg's
   * array literals), and Postgres no less: it reads the JSON as cheaply as the arrays (PGlite and Postgres 15).
   */
  async function recordEncoded(rows: string[]): Promise<number> {
    if (rows.length === 0) return 0;
    const res = await pool.query(ENCODED_ROWS_INSERT, [`[${rows.map(storableRowJson).join(',')}]`]);
    return res.rowCount ?? 0;
  }

  return {
    /** Idempotent per (jobId, jobTs, attempt, part): returns false when that row was already recorded. */
    async record(r: AgentRun): Promise<boolean> {
      const res = await pool.query(
        `INSERT INTO agent_runs (job_id, attempt, org_id, agent, action, model, state, input_tokens, output_tokens,
                                 cost_usd, duration_ms, cache_hit, error, request_id, created_at,
                                 tier, cached_tokens, thoughts_tokens, standard_cost_usd, job_ts, part,
                                 embedding_tokens, embedding_cost_usd, embedding_estimated, embedding_model)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, COALESCE($15, now()), $16, $17, $18, $19, $20, $21, $22, $23, $24, $25)
         ON CONFLICT (job_id, job_ts, attempt, part) DO NOTHING`,
        [
          r.jobId,
          r.attempt,
          r.orgId,
          r.agent,
          r.action,
          r.model,
          r.state,
          Math.round(r.inputTokens),
          Math.round(r.outputTokens),
          r.costUsd,
          Math.round(r.durationMs),
          r.cacheHit ?? null,
          storableText(r.error),
          storableText(r.requestId),
          r.createdAt ?? null,
          r.tier ?? 'standard',
          Math.round(r.cachedTokens ?? 0),
          Math.round(r.thoughtsTokens ?? 0),
          r.standardCostUsd ?? r.costUsd,
          Math.round(r.jobTs ?? 0),
          r.part ?? '',
          Math.round(r.embeddingTokens ?? 0),
          r.embeddingCostUsd ?? 0,
          r.embeddingEstimated ?? false,
          r.embeddingModel ?? null,
        ],
      );
      return res.rowCount === 1;
    },

    /**
     * Many rows in one INSERT (one round trip, one commit), each idempotent per (jobId, jobTs, attempt, part) like
     * `record`. Returns how many rows were new. The rows go as their JSON, as the usage stream holds them
     * (`recordEncoded`): a row written here and one written through the stream are stored alike.
     */
    async recordMany(runs: AgentRun[]): Promise<number> {
      return recordEncoded(runs.map((r) => JSON.stringify(r)));
    },

    recordEncoded,

    async countSuccessful(jobId: string): Promise<number> {
      const { rows } = await pool.query<{ n: string }>(
        "SELECT count(*) AS n FROM agent_runs WHERE job_id = $1 AND state = 'completed'",
        [jobId],
      );
      return Number(rows[0].n);
    },

    /**
     * Usage in [from, to), grouped; rows sorted by key. `orgId: null` is every org (the operator's view);
     * `groupBy: 'total'` gives the window's one row (percentiles do not add up from groups).
     */
    async usage({ orgId, from, to, groupBy }: { orgId: string | null; from: Date; to: Date; groupBy: UsageGroupBy }): Promise<UsageRow[]> {
      const expr = GROUP_EXPR[groupBy];
      if (!expr) throw new TypeError(`unknown groupBy ${String(groupBy)}`);
      const split = SPLIT_GROUPINGS.has(groupBy);
      const { rows } = await pool.query(
        `SELECT ${expr} AS key,
                -- An ingest row (migration 024) is no job: it counts in the sums, not in what describes jobs.
                count(DISTINCT (job_id, job_ts)) FILTER (WHERE kind = 'attempt') AS jobs,
                COALESCE(sum(input_tokens), 0) AS input_tokens,
                COALESCE(sum(output_tokens), 0) AS output_tokens,
                COALESCE(sum(cost_usd), 0) AS cost_usd,
                COALESCE(sum(cached_tokens), 0) AS cached_tokens,
                COALESCE(sum(thoughts_tokens), 0) AS thoughts_tokens,
                COALESCE(sum(COALESCE(standard_cost_usd, cost_usd)), 0) AS standard_cost_usd,
                COALESCE(sum(embedding_tokens), 0) AS embedding_tokens,
                COALESCE(sum(embedding_cost_usd), 0) AS embedding_cost_usd,
                COALESCE(sum(embedding_tokens) FILTER (WHERE kind = 'ingest'), 0) AS ingest_embedding_tokens,
                COALESCE(sum(embedding_cost_usd) FILTER (WHERE kind = 'ingest'), 0) AS ingest_embedding_cost_usd,
                COALESCE(sum(embedding_tokens) FILTER (WHERE kind = 'search'), 0) AS search_embedding_tokens,
                COALESCE(sum(embedding_cost_usd) FILTER (WHERE kind = 'search'), 0) AS search_embedding_cost_usd,
                COALESCE(avg((cache_hit IS NOT NULL)::int) FILTER (WHERE state = 'completed' AND kind = 'attempt' AND part NOT LIKE 'standard:%'), 0) AS cache_hit_rate,
                percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) FILTER (WHERE state <> 'delayed' AND kind = 'attempt' AND part NOT LIKE 'standard:%') AS p50,
                percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) FILTER (WHERE state <> 'delayed' AND kind = 'attempt' AND part NOT LIKE 'standard:%') AS p95
         FROM ${split ? EMBEDDING_SPLIT_SOURCE : 'agent_runs'}
         WHERE ($1::text IS NULL OR org_id = $1) AND created_at >= $2 AND created_at < $3
         GROUP BY 1
         ORDER BY 1`,
        split ? [orgId, from, to, embeddingModel] : [orgId, from, to],
      );
      return rows.map((r) => ({
        key: String(r.key),
        jobs: Number(r.jobs),
        inputTokens: Number(r.input_tokens),
        outputTokens: Number(r.output_tokens),
        costUsd: Number(r.cost_usd),
        cachedTokens: Number(r.cached_tokens),
        thoughtsTokens: Number(r.thoughts_tokens),
        standardCostUsd: Number(r.standard_cost_usd),
        embeddingTokens: Number(r.embedding_tokens),
        embeddingCostUsd: Number(r.embedding_cost_usd),
        ingestEmbeddingTokens: Number(r.ingest_embedding_tokens),
        ingestEmbeddingCostUsd: Number(r.ingest_embedding_cost_usd),
        searchEmbeddingTokens: Number(r.search_embedding_tokens),
        searchEmbeddingCostUsd: Number(r.search_embedding_cost_usd),
        cacheHitRate: Number(r.cache_hit_rate),
        // No attempt in the window: no percentile (SQL NULL), shown as 0 like the other empty sums.
        p50Ms: Number(r.p50 ?? 0),
        p95Ms: Number(r.p95 ?? 0),
      }));
    },
  };
}

export type RunStore = ReturnType<typeof createRunStore>;
