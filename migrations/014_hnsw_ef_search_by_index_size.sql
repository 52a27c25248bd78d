-- hnsw.ef_search chosen per call from the size of the index the query walks, instead of one value for all
-- (013 set 400 everywhere). Recall of the same filtered query against an exact ranking, 100 queries
-- (README "Vectors at scale"): at ef_search 100, 0.987 with 10k rows and 0.974 with 30k, but 0.959 with 50k
-- and 0.888 for a 100k-row org in a 200k-row index; at 400, 0.992 with 50k and 0.965 at 200k. 400 costs
-- about 2x the SQL time (10k: p50 6.56 ms at 100, 13.74 ms at 400, one run), which a small index does not
-- need. The index's size on disk (pg_relation_size: the file's length, no statistics, never stale, also in
-- PGlite where no autovacuum keeps reltuples current) stands for its row count: about 4 kB a row at 768
-- dims (781 MB for 200k rows), so 128 MiB is about 32k rows, between the last size measured fine at 100 and
-- the first measured short. The large-scope branch sets it for its one statement (the function's own
-- SET hnsw.ef_search restores the caller's value on exit); the exact-scan branch does not read it.
CREATE OR REPLACE FUNCTION vector_ef_search_for(index_bytes bigint) RETURNS int LANGUAGE sql IMMUTABLE
  AS 'SELECT CASE WHEN index_bytes > 134217728 THEN 400 ELSE 100 END';

CREATE OR REPLACE FUNCTION semantic_cache_nearest(
  query_embedding vector(768),
  match_org       text,
  match_agent     text,
  match_action    text,
  match_model     text,
  match_prompt_version int
) RETURNS TABLE (id uuid, response jsonb, similarity float)
LANGUAGE plpgsql STABLE
SET enable_sort = on
SET hnsw.ef_search = 100
AS $$
#variable_conflict use_column
DECLARE
  scope_rows int;
BEGIN
  SELECT count(*) INTO scope_rows FROM (
    SELECT 1 FROM semantic_cache c
    WHERE c.org_id = match_org AND c.agent = match_agent AND c.action = match_action
      AND c.model = match_model AND c.prompt_version = match_prompt_version AND c.expires_at > now()
    LIMIT vector_exact_scan_max() + 1) s;
  IF scope_rows <= vector_exact_scan_max() THEN
    RETURN QUERY
      SELECT s.id, s.response, (1 - s.d)::float FROM (
        SELECT c.id, c.response, c.embedding <=> query_embedding AS d
        FROM semantic_cache c
        WHERE c.org_id = match_org AND c.agent = match_agent AND c.action = match_action
          AND c.model = match_model AND c.prompt_version = match_prompt_version AND c.expires_at > now()
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
        AND c.model = match_model AND c.prompt_version = match_prompt_version AND c.expires_at > now()
      ORDER BY c.embedding <=> query_embedding
      LIMIT 1;
  END IF;
END;
$$;

CREATE OR REPLACE FUNCTION match_documents(
  query_embedding vector(768),
  match_table     text,
  match_org       text,
  match_threshold float DEFAULT 0.7,
  match_count     int DEFAULT 10,
  filter          jsonb DEFAULT NULL
) RETURNS TABLE (id uuid, content text, similarity float, metadata jsonb)
LANGUAGE plpgsql STABLE
AS $$
#variable_conflict use_column
DECLARE
  scope_rows int;
BEGIN
  IF match_count IS NULL OR match_count < 1 THEN
    RAISE EXCEPTION 'match_documents: match_count must be >= 1' USING ERRCODE = '22023';
  END IF;

  IF match_table = 'industry_packs' THEN
    RETURN QUERY
      SELECT p.id,
             p.display_name || E'\n' || p.description,
             (1 - (p.embedding <=> query_embedding))::float,
             jsonb_build_object('external_id', p.external_id, 'industry', p.industry, 'display_name', p.display_name)
      FROM industry_packs p
      WHERE p.is_active
        AND (filter->>'industry' IS NULL OR p.industry = filter->>'industry')
        AND 1 - (p.embedding <=> query_embedding) >= match_threshold
      ORDER BY p.embedding <=> query_embedding
      LIMIT match_count;

  ELSIF match_table = 'playbooks' THEN
    RETURN QUERY
      SELECT b.id,
             b.title || E'\n' || b.description,
             (1 - (b.embedding <=> query_embedding))::float,
             jsonb_build_object('external_id', b.external_id, 'org_id', b.org_id, 'title', b.title,
                                'type', b.type, 'difficulty', b.difficulty)
      FROM playbooks b
      WHERE b.is_active
        AND (b.org_id IS NULL OR b.org_id = match_org)
        AND (filter->>'type' IS NULL OR b.type = filter->>'type')
        AND (filter->>'difficulty' IS NULL OR b.difficulty = filter->>'difficulty')
        AND 1 - (b.embedding <=> query_embedding) >= match_threshold
      ORDER BY b.embedding <=> query_embedding
      LIMIT match_count;

  ELSIF match_table = 'chat_facts' THEN
    SELECT count(*) INTO scope_rows FROM (
      SELECT 1 FROM chat_facts f
      WHERE f.org_id = match_org AND (f.expires_at IS NULL OR f.expires_at > now())
      LIMIT vector_exact_scan_max() + 1) s;
    IF scope_rows <= vector_exact_scan_max() THEN
      RETURN QUERY
        SELECT s.id, s.content, (1 - s.d)::float, s.metadata FROM (
          SELECT f.id, f.content, f.embedding <=> query_embedding AS d,
                 jsonb_build_object('external_id', f.external_id, 'startup_id', f.startup_id, 'fact_type', f.fact_type,
                                    'confidence', f.confidence, 'expires_at', f.expires_at) AS metadata
          FROM chat_facts f
          WHERE f.org_id = match_org
            AND (f.expires_at IS NULL OR f.expires_at > now())
            AND (filter->>'startup_id' IS NULL OR f.startup_id = filter->>'startup_id')
            AND (filter->>'fact_type' IS NULL OR f.fact_type = filter->>'fact_type')
          OFFSET 0) s
        WHERE 1 - s.d >= match_threshold
        ORDER BY s.d
        LIMIT match_count;
    ELSE
      PERFORM set_config('enable_sort', 'off', true);
      PERFORM set_config('hnsw.ef_search', vector_ef_search_for(pg_relation_size('chat_facts_embedding_idx'))::text, true);
      RETURN QUERY
        SELECT f.id,
               f.content,
               (1 - (f.embedding <=> query_embedding))::float,
               jsonb_build_object('external_id', f.external_id, 'startup_id', f.startup_id, 'fact_type', f.fact_type,
                                  'confidence', f.confidence, 'expires_at', f.expires_at)
        FROM chat_facts f
        WHERE f.org_id = match_org
          AND (f.expires_at IS NULL OR f.expires_at > now())
          AND (filter->>'startup_id' IS NULL OR f.startup_id = filter->>'startup_id')
          AND (filter->>'fact_type' IS NULL OR f.fact_type = filter->>'fact_type')
          AND 1 - (f.embedding <=> query_embedding) >= match_threshold
        ORDER BY f.embedding <=> query_embedding
        LIMIT match_count;
    END IF;

  ELSE
    RAISE EXCEPTION 'match_documents: unknown table "%"', match_table USING ERRCODE = '22023';
  END IF;
END;
$$;

-- CREATE OR REPLACE drops the SET clauses given outside the definition, so every setting is restated.
ALTER FUNCTION match_documents(vector, text, text, float, int, jsonb) SET enable_sort = on;
ALTER FUNCTION match_documents(vector, text, text, float, int, jsonb) SET hnsw.ef_search = 100;
DO $$
BEGIN
  IF (SELECT string_to_array(extversion, '.')::int[] >= ARRAY[0, 8, 0] FROM pg_extension WHERE extname = 'vector') THEN
    ALTER FUNCTION match_documents(vector, text, text, float, int, jsonb) SET hnsw.iterative_scan = 'strict_order';
    ALTER FUNCTION semantic_cache_nearest(vector, text, text, text, text, int) SET hnsw.iterative_scan = 'strict_order';
    ALTER FUNCTION match_documents(vector, text, text, float, int, jsonb) SET hnsw.max_scan_tuples = 20000;
    ALTER FUNCTION semantic_cache_nearest(vector, text, text, text, text, int) SET hnsw.max_scan_tuples = 20000;
  END IF;
END;
$$;
