import type pg from 'pg';
import { purgeExpiredSemanticCache, type PurgeOptions } from './semantic-cache-purge.js';
import { embedChecked, toVectorParam, type EmbedFn } from '../knowledge/embedding.js';
import { refusedForContent, storableText } from '../infra/db/pg-content.js';

/** The hard partition of the cache: a lookup only ever sees rows with all six equal. */
export interface SemanticScope {
  orgId: string;
  agent: string;
  action: string;
  model: string;
  promptVersion: number;
  /** What of the input besides its text decides the answer (the action's `semanticScope`); '' when nothing does. */
  inputScope?: string;
}

/**
 * Told once the text is embedded, before the SQL that follows: the embedding call is paid for even when that SQL
 * then fails (Postgres unavailable) and the caller goes on without the cache (the attempt's ledger row counts it).
 */
export interface SemanticHooks {
  onEmbedded?: (texts: string[]) => void;
}

export type SemanticLookup<R = unknown> =
  | { hit: true; response: R; similarity: number }
  /** `lookedAt`: the database's time of the lookup, for `store` to refuse an answer an invalidation has overtaken. */
  | { hit: false; embedding: number[]; lookedAt: Date };

/**
 * pgvector cache of responses to free-text questions. The similarity threshold only ranks inside a
 * scope; the scope (tenant, agent, action, model, prompt version) is an equality filter, so identical
 * text from another org can never hit.
 */
export function createSemanticCache({ pool, embed, threshold = 0.95, ttlS }: { pool: pg.Pool; embed: EmbedFn; threshold?: number; ttlS: number }) {
  if (!(threshold > 0 && threshold <= 1)) throw new RangeError('threshold must be in (0, 1]');
  if (!(ttlS > 0)) throw new RangeError('ttlS must be > 0');
  /** Recorded before the rows go: a store that checks after this refuses an answer looked up before it. */
  const invalidated = (orgId: string, agent: string) =>
    pool.query(
      `INSERT INTO semantic_cache_invalidations (org_id, agent, at) VALUES ($1, $2, now())
       ON CONFLICT (org_id, agent) DO UPDATE SET at = excluded.at`,
      [orgId, agent],
    );
  return {
    threshold,

    async lookup<R = unknown>(q: SemanticScope & { text: string }, hooks: SemanticHooks = {}): Promise<SemanticLookup<R>> {
      const [embedding] = await embedChecked(embed, [q.text]);
      hooks.onEmbedded?.([q.text]);
      // One row always: the lookup's time beside the nearest entry, if any.
      const { rows } = await pool.query<{ looked_at: Date; response: R | null; similarity: number | null }>(
        `SELECT now() AS looked_at, n.response, n.similarity
         FROM (VALUES (1)) one LEFT JOIN LATERAL semantic_cache_nearest($1::vector, $2, $3, $4, $5, $6, $7) n ON true`,
        [toVectorParam(embedding), q.orgId, q.agent, q.action, q.model, q.promptVersion, storableText(q.inputScope ?? '')],
      );
      const best = rows[0];
      if (best.similarity !== null && Number(best.similarity) >= threshold) return { hit: true, response: best.response as R, similarity: Number(best.similarity) };
      return { hit: false, embedding, lookedAt: best.looked_at };
    },

    /**
     * Pass the embedding a miss returned to avoid embedding the same text twice. False when Postgres cannot hold
     * the answer (jsonb takes no NUL and no lone surrogate): that answer is not cached, and nothing fails. The
     * question is kept only to be read (lookups go by embedding), so a NUL in it is stored as U+FFFD. `onEmbedded`:
     * only when the store embeds the text itself (no `embedding` given).
     */
    async store(e: SemanticScope & { text: string; response: unknown; embedding?: number[]; lookedAt?: Date }, hooks: SemanticHooks = {}): Promise<boolean> {
      let embedding = e.embedding;
      if (!embedding) {
        [embedding] = await embedChecked(embed, [e.text]);
        hooks.onEmbedded?.([e.text]);
      }
      try {
        // Refused (false) when the org's answers of the agent were invalidated after the miss's lookup.
        const res = await pool.query(
          `INSERT INTO semantic_cache (org_id, agent, action, model, prompt_version, query, embedding, response, expires_at, input_scope)
           SELECT $1::text, $2::text, $3::text, $4::text, $5::int, $6::text, $7::vector, $8::jsonb, now() + make_interval(secs => $9::float8), $10::text
           WHERE $11::timestamptz IS NULL OR NOT EXISTS (
             SELECT 1 FROM semantic_cache_invalidations i
             WHERE i.org_id IN ($1::text, '') AND i.agent IN ($2::text, '') AND i.at >= $11::timestamptz)`,
          [e.orgId, e.agent, e.action, e.model, e.promptVersion, storableText(e.text), toVectorParam(embedding), JSON.stringify(e.response), ttlS, storableText(e.inputScope ?? ''), e.lookedAt ?? null],
        );
        return res.rowCount === 1;
      } catch (err) {
        if (refusedForContent(err)) return false;
        throw err;
      }
    },

    /** Drops one agent's cached answers in every org (shared knowledge it reads changed); returns how many. */
    async invalidateAgentEverywhere(agent: string): Promise<number> {
      await invalidated('', agent);
      return (await pool.query('DELETE FROM semantic_cache WHERE agent = $1', [agent])).rowCount ?? 0;
    },

    /** Drops an org's cached answers (of one agent, if given); returns how many. */
    async invalidate(orgId: string, agent?: string): Promise<number> {
      await invalidated(orgId, agent ?? '');
      const res = agent
        ? await pool.query('DELETE FROM semantic_cache WHERE org_id = $1 AND agent = $2', [orgId, agent])
        : await pool.query('DELETE FROM semantic_cache WHERE org_id = $1', [orgId]);
      return res.rowCount ?? 0;
    },

    /** Deletes expired rows in short batches (see purgeExpiredSemanticCache); returns how many. */
    async purgeExpired(opts: PurgeOptions = {}): Promise<number> {
      return (await purgeExpiredSemanticCache(pool, opts)).deleted;
    },
  };
}

export type SemanticCache = ReturnType<typeof createSemanticCache>;
