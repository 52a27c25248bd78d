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

export type SemanticLookup<R = unknown> =
  | { hit: true; response: R; similarity: number }
  | { hit: false; embedding: number[] };

/**
 * pgvector cache of responses to free-text questions. The similarity threshold only ranks inside a
 * scope; the scope (tenant, agent, action, model, prompt version) is an equality filter, so identical
 * text from another org can never hit.
 */
export function createSemanticCache({ pool, embed, threshold = 0.95, ttlS }: { pool: pg.Pool; embed: EmbedFn; threshold?: number; ttlS: number }) {
  if (!(threshold > 0 && threshold <= 1)) throw new RangeError('threshold must be in (0, 1]');
  if (!(ttlS > 0)) throw new RangeError('ttlS must be > 0');
  return {
    threshold,

    async lookup<R = unknown>(q: SemanticScope & { text: string }): Promise<SemanticLookup<R>> {
      const [embedding] = await embedChecked(embed, [q.text]);
      const { rows } = await pool.query<{ response: R; similarity: number }>(
        'SELECT response, similarity FROM semantic_cache_nearest($1::vector, $2, $3, $4, $5, $6, $7)',
        [toVectorParam(embedding), q.orgId, q.agent, q.action, q.model, q.promptVersion, storableText(q.inputScope ?? '')],
      );
      const best = rows[0];
      if (best && Number(best.similarity) >= threshold) return { hit: true, response: best.response, similarity: Number(best.similarity) };
      return { hit: false, embedding };
    },

    /**
     * Pass the embedding a miss returned to avoid embedding the same text twice. False when Postgres cannot hold
     * the answer (jsonb takes no NUL and no lone surrogate): that answer is not cached, and nothing fails. The
     * question is kept only to be read (lookups go by embedding), so a NUL in it is stored as U+FFFD.
     */
    async store(e: SemanticScope & { text: string; response: unknown; embedding?: number[] }): Promise<boolean> {
      const [embedding] = e.embedding ? [e.embedding] : await embedChecked(embed, [e.text]);
      try {
        await pool.query(
          `INSERT INTO semantic_cache (org_id, agent, action, model, prompt_version, query, embedding, response, expires_at, input_scope)
           VALUES ($1, $2, $3, $4, $5, $6, $7::vector, $8::jsonb, now() + make_interval(secs => $9), $10)`,
          [e.orgId, e.agent, e.action, e.model, e.promptVersion, storableText(e.text), toVectorParam(embedding), JSON.stringify(e.response), ttlS, storableText(e.inputScope ?? '')],
        );
        return true;
      } catch (err) {
        if (refusedForContent(err)) return false;
        throw err;
      }
    },

    /** Drops one agent's cached answers in every org (shared knowledge it reads changed); returns how many. */
    async invalidateAgentEverywhere(agent: string): Promise<number> {
      return (await pool.query('DELETE FROM semantic_cache WHERE agent = $1', [agent])).rowCount ?? 0;
    },

    /** Drops an org's cached answers (of one agent, if given); returns how many. */
    async invalidate(orgId: string, agent?: string): Promise<number> {
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
