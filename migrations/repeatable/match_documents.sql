-- revision: 1
-- The current definition of match_documents (a repeatable migration: edit this file and raise the revision
-- above; `migrate` applies it again). History: 006 (function), 007 (filtered ANN settings), 012 (exact scan of
-- small scopes, HNSW for large ones), 014 (ef_search by index size), 015 / 017 (a tenant's own index).
--
-- Revision 1 (2026-12-03):
-- * The similarity threshold is applied to the top match_count rows, not inside the index scan. With the
--   threshold as a scan qual, a query whose neighbours score under it (any query with fewer than match_count
--   rows above the default 0.7) kept the iterative scan pulling candidates until hnsw.max_scan_tuples (20,000):
--   in-process PGlite, 20k rows in one scope, ef_search 100, 60 queries: threshold -1 / 0.3 p50 5.8 / 5.6 ms;
--   0.5 / 0.7 p50 245.9 / 267.5 ms (bench/.scratch, README "Vectors at scale"). Rows come out of the scan in
--   distance order (strict_order), so the rows passing the threshold are a prefix of the top match_count:
--   the same rows as before. Filters on columns (startup_id, fact_type) stay in the scan: those rows must be
--   skipped to find match_count others.
-- * An org with its own index is walked through it without first counting its scope (~1 ms at 100k rows).
-- * The similarity is 1 - the distance the walk orders by, computed once a row (the tenant index's expression,
--   l2_normalize(embedding), gives the column's cosine distance: cosine ignores length).
CREATE OR REPLACE FUNCTION match_documents(
  query_embedding vector(768),
  match_table     text,
  match_org       text,
  match_threshold float DEFAULT 0.7,
  match_count     int DEFAULT 10,
  filter          jsonb DEFAULT NULL
) RETURNS TABLE (id uuid, content text, similarity float, metadata jsonb)
LANGUAGE plpgsql STABLE
SET enable_sort = on
SET hnsw.ef_search = 100
AS $$
#variable_conflict use_column
DECLARE
  scope_rows int;
  own text;
BEGIN
  IF match_count IS NULL OR match_count < 1 THEN
    RAISE EXCEPTION 'match_documents: match_count must be >= 1' USING ERRCODE = '22023';
  END IF;

  IF match_table = 'industry_packs' THEN
    RETURN QUERY
      SELECT s.id, s.content, (1 - s.d)::float, s.metadata FROM (
        SELECT p.id,
               p.display_name || E'\n' || p.description AS content,
               jsonb_build_object('external_id', p.external_id, 'industry', p.industry, 'display_name', p.display_name) AS metadata,
               p.embedding <=> query_embedding AS d
        FROM industry_packs p
        WHERE p.is_active
          AND (filter->>'industry' IS NULL OR p.industry = filter->>'industry')
        ORDER BY p.embedding <=> query_embedding
        LIMIT match_count) s
      WHERE 1 - s.d >= match_threshold
      ORDER BY s.d;

  ELSIF match_table = 'playbooks' THEN
    RETURN QUERY
      SELECT s.id, s.content, (1 - s.d)::float, s.metadata FROM (
        SELECT b.id,
               b.title || E'\n' || b.description AS content,
               jsonb_build_object('external_id', b.external_id, 'org_id', b.org_id, 'title', b.title,
                                  'type', b.type, 'difficulty', b.difficulty) AS metadata,
               b.embedding <=> query_embedding AS d
        FROM playbooks b
        WHERE b.is_active
          AND (b.org_id IS NULL OR b.org_id = match_org)
          AND (filter->>'type' IS NULL OR b.type = filter->>'type')
          AND (filter->>'difficulty' IS NULL OR b.difficulty = filter->>'difficulty')
        ORDER BY b.embedding <=> query_embedding
        LIMIT match_count) s
      WHERE 1 - s.d >= match_threshold
      ORDER BY s.d;

  ELSIF match_table = 'chat_facts' THEN
    own := vector_tenant_index_name('chat_facts', match_org);
    IF to_regclass(quote_ident(own)) IS NOT NULL THEN
      -- The org's own index: the org as a literal so the planner can prove the partial index's predicate, and
      -- the order by the index's own expression (017), which no other index provides.
      PERFORM set_config('enable_sort', 'off', true);
      PERFORM set_config('hnsw.ef_search', vector_tenant_ef_search(own)::text, true);
      RETURN QUERY EXECUTE format($q$
        SELECT s.id, s.content, (1 - s.d)::float, s.metadata FROM (
          SELECT f.id,
                 f.content,
                 jsonb_build_object('external_id', f.external_id, 'startup_id', f.startup_id, 'fact_type', f.fact_type,
                                    'confidence', f.confidence, 'expires_at', f.expires_at) AS metadata,
                 %2$s <=> $1 AS d
          FROM chat_facts f
          WHERE f.org_id = %1$L
            AND (f.expires_at IS NULL OR f.expires_at > now())
            AND ($4->>'startup_id' IS NULL OR f.startup_id = $4->>'startup_id')
            AND ($4->>'fact_type' IS NULL OR f.fact_type = $4->>'fact_type')
          ORDER BY %2$s <=> $1
          LIMIT $3) s
        WHERE 1 - s.d >= $2
        ORDER BY s.d$q$, match_org, vector_tenant_order_by(own, 'f'))
        USING query_embedding, match_threshold, match_count, filter;
      RETURN;
    END IF;

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
        SELECT s.id, s.content, (1 - s.d)::float, s.metadata FROM (
          SELECT f.id,
                 f.content,
                 jsonb_build_object('external_id', f.external_id, 'startup_id', f.startup_id, 'fact_type', f.fact_type,
                                    'confidence', f.confidence, 'expires_at', f.expires_at) AS metadata,
                 f.embedding <=> query_embedding AS d
          FROM chat_facts f
          WHERE f.org_id = match_org
            AND (f.expires_at IS NULL OR f.expires_at > now())
            AND (filter->>'startup_id' IS NULL OR f.startup_id = filter->>'startup_id')
            AND (filter->>'fact_type' IS NULL OR f.fact_type = filter->>'fact_type')
          ORDER BY f.embedding <=> query_embedding
          LIMIT match_count) s
        WHERE 1 - s.d >= match_threshold
        ORDER BY s.d;
    END IF;

  ELSE
    RAISE EXCEPTION 'match_documents: unknown table "%"', match_table USING ERRCODE = '22023';
  END IF;
END;
$$;

-- pgvector >= 0.8: iterative index scans, so a selective filter (another org's rows in the shared index, a
-- startup_id) does not end the scan with fewer than match_count rows; bounded by max_scan_tuples.
DO $$
BEGIN
  IF (SELECT string_to_array(extversion, '.')::int[] >= ARRAY[0, 8, 0] FROM pg_extension WHERE extname = 'vector') THEN
    ALTER FUNCTION match_documents(vector, text, text, float, int, jsonb) SET hnsw.iterative_scan = 'strict_order';
    ALTER FUNCTION match_documents(vector, text, text, float, int, jsonb) SET hnsw.max_scan_tuples = 20000;
  END IF;
END;
$$;
