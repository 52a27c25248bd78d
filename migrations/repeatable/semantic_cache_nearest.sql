-- revision: 3
-- The current definition of semantic_cache_nearest (a repeatable migration: edit this file and raise the
-- revision above; `migrate` applies it again). History: 004 / 006 (function), 007 (filtered ANN settings), 012
-- (exact scan of small scopes, HNSW for large ones), 014 (ef_search by index size), 015 / 017 (a tenant's own
-- index).
--
-- Revision 1 (2026-12-03): an org with its own index is walked through it without first counting its scope
-- (~1 ms at 100k rows). The caller compares the one nearest entry with its threshold, so no threshold is
-- applied here and the scan stops at the first row.
-- Revision 2 (2026-12-03): the org's own index is walked with hnsw.ef_search 40, not the 100 RAG's top 10 needs.
-- A lookup only decides hit or miss at the cache's threshold (0.95), and the entries that make a hit are the
-- query's near-duplicates, which a narrow walk reaches first. Measured in-process on 100k entries in one scope
-- (bench/.scratch, AMD EPYC; truth by brute force): half the queries a stored entry with two light words added,
-- half new questions: decisions as the exact scan's 100 of 100 at ef_search 20 / 40 / 64 / 100, nearest entry
-- the exact one 92 / 94 / 95 / 95 of 100, p50 / p95 4.19 / 9.87, 5.39 / 6.86, 7.54 / 9.15, 10.25 / 12.42 ms; 100
-- stored entries with their last word dropped (similarity ~0.95): found 100 of 100 at 40, 64 and 100.
-- BENCH_ONLY=vectors-large-cache reports the decisions and times on each run.
-- Revision 3 (2026-12-06): the input scope (migration 019) is part of the hard filter; the six-argument call
-- (no scope) still works, as the scope ''.
DROP FUNCTION IF EXISTS semantic_cache_nearest(vector, text, text, text, text, int);
CREATE OR REPLACE FUNCTION semantic_cache_nearest(
  query_embedding vector(768),
  match_org       text,
  match_agent     text,
  match_action    text,
  match_model     text,
  match_prompt_version int,
  match_scope     text DEFAULT ''
) RETURNS TABLE (id uuid, response jsonb, similarity float)
LANGUAGE plpgsql STABLE
SET enable_sort = on
SET hnsw.ef_search = 100
AS $$
#variable_conflict use_column
DECLARE
  scope_rows int;
  own text := vector_tenant_index_name('semantic_cache', match_org);
BEGIN
  IF to_regclass(quote_ident(own)) IS NOT NULL THEN
    -- The org's own index: the org as a literal so the planner can prove the partial index's predicate.
    PERFORM set_config('enable_sort', 'off', true);
    PERFORM set_config('hnsw.ef_search', '40', true);
    RETURN QUERY EXECUTE format($q$
      SELECT c.id, c.response, (1 - (c.embedding <=> $1))::float
      FROM semantic_cache c
      WHERE c.org_id = %L AND c.agent = $2 AND c.action = $3
        AND c.model = $4 AND c.prompt_version = $5 AND c.input_scope = $6 AND c.expires_at > now()
      ORDER BY %s <=> $1
      LIMIT 1$q$, match_org, vector_tenant_order_by(own, 'c'))
      USING query_embedding, match_agent, match_action, match_model, match_prompt_version, match_scope;
    RETURN;
  END IF;

  SELECT count(*) INTO scope_rows FROM (
    SELECT 1 FROM semantic_cache c
    WHERE c.org_id = match_org AND c.agent = match_agent AND c.action = match_action
      AND c.model = match_model AND c.prompt_version = match_prompt_version AND c.input_scope = match_scope
      AND c.expires_at > now()
    LIMIT vector_exact_scan_max() + 1) s;
  IF scope_rows <= vector_exact_scan_max() THEN
    RETURN QUERY
      SELECT s.id, s.response, (1 - s.d)::float FROM (
        SELECT c.id, c.response, c.embedding <=> query_embedding AS d
        FROM semantic_cache c
        WHERE c.org_id = match_org AND c.agent = match_agent AND c.action = match_action
          AND c.model = match_model AND c.prompt_version = match_prompt_version AND c.input_scope = match_scope
      AND c.expires_at > now()
        OFFSET 0) s
      ORDER BY s.d
      LIMIT 1;
  ELSE
    PERFORM set_config('enable_sort', 'off', true);
    PERFORM set_config('hnsw.ef_search', vector_ef_search_for(pg_relation_size('semantic_cache_embedding_idx'))::text, true);
    RETURN QUERY
      SELECT c.id, c.response, (1 - (c.embedding <=> query_embedding))::float
      FROM semantic_cache c
      WHERE c.org_id = match_org AND c.agent = match_agent AND c.action = match_action
        AND c.model = match_model AND c.prompt_version = match_prompt_version AND c.input_scope = match_scope
      AND c.expires_at > now()
      ORDER BY c.embedding <=> query_embedding
      LIMIT 1;
  END IF;
END;
$$;

-- pgvector >= 0.8: iterative index scans, so the other scopes' rows in the shared index do not end the scan
-- empty-handed; bounded by max_scan_tuples.
DO $$
BEGIN
  IF (SELECT string_to_array(extversion, '.')::int[] >= ARRAY[0, 8, 0] FROM pg_extension WHERE extname = 'vector') THEN
    ALTER FUNCTION semantic_cache_nearest(vector, text, text, text, text, int, text) SET hnsw.iterative_scan = 'strict_order';
    ALTER FUNCTION semantic_cache_nearest(vector, text, text, text, text, int, text) SET hnsw.max_scan_tuples = 20000;
  END IF;
END;
$$;
