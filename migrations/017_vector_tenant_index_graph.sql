-- A tenant's own HNSW index gets a denser graph: m 24, ef_construction 128 (the shared index keeps pgvector's
-- defaults, m 16 / ef_construction 64), and is walked with hnsw.ef_search 100 instead of 200.
-- Measured (scratch, in-process PGlite 0.5.14 / pgvector 0.8.7, 100k rows of the bench corpus in one org, 768
-- dims, 100 queries, recall@10 against brute force, 2026-12-03 10:50-11:20, README "Vectors at scale"):
--   m 16 / efc 64 (015):   build ~400-770 s; recall 0.916 at ef_search 100, 0.967 at 200 (bench runs of 2026-12-02)
--   m 16 / efc 128:        build 456 s;  recall 0.922 at 100 (first call p95 17.4 ms), 0.97 at 200 (p95 62.5 ms)
--   m 24 / efc 128 (this): build 638 s;  recall 0.960 at 100, first call p50 / p95 16.3 / 17.9 ms, repeated
--                          5.9 / 6.4 ms; 0.984 at 200 (33.4 ms p95)
-- The denser graph costs 40 % more build time and reaches 0.95 at half the ef_search. An index built before this
-- migration keeps its graph, so its ef_search is read from the index's own options: 100 for m >= 24, else 200.
--
-- The index is on l2_normalize(embedding), not the column: with m 24 pgvector's cost estimate for it rose above
-- the shared index's (m 16), and the planner walked the SHARED index with an org filter for the tenant's query
-- (BENCH_ONLY=vectors-large 2026-12-03 11:18: recall 0.884, the shared index's figure at ef_search 100; EXPLAIN at
-- 20k + 20k rows: "Index Scan using chat_facts_embedding_idx ... Filter: (org_id = 'big')"). The tenant branch
-- orders by the same expression, which only the tenant's index provides, so no other index can be chosen.
-- Cosine distance ignores a vector's length, so the order and the distances are those of the raw column.
CREATE OR REPLACE FUNCTION vector_tenant_index_create(tbl text, org text, build_memory text DEFAULT NULL)
RETURNS text LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
  idx text := vector_tenant_index_checked(tbl, org);
BEGIN
  IF build_memory IS NOT NULL THEN
    PERFORM set_config('maintenance_work_mem', build_memory, true);
  END IF;
  EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %I USING hnsw ((l2_normalize(embedding)::vector(768)) vector_cosine_ops) WITH (m = 24, ef_construction = 128) WHERE org_id = %L', idx, tbl, org);
  RETURN idx;
END;
$$;

-- The expression the tenant branch orders by, for the tenant index `idx` on the table aliased `alias`: the index's
-- own (017: l2_normalize), or the column for an index built before 017.
CREATE OR REPLACE FUNCTION vector_tenant_order_by(idx text, alias text) RETURNS text LANGUAGE sql STABLE AS $$
  SELECT CASE WHEN (SELECT i.indexprs IS NOT NULL FROM pg_index i WHERE i.indexrelid = to_regclass(quote_ident(idx)))
    THEN format('(l2_normalize(%I.embedding)::vector(768))', alias) ELSE format('%I.embedding', alias) END
$$;

-- 015's ef_search without an index to read it from: replaced by the one below, which the query functions now call.
DROP FUNCTION IF EXISTS vector_tenant_ef_search();

-- hnsw.ef_search for a walk of the tenant index `idx`, by the graph it was built with (its reloptions).
CREATE OR REPLACE FUNCTION vector_tenant_ef_search(idx text) RETURNS int LANGUAGE sql STABLE AS $$
  SELECT CASE WHEN coalesce((
    SELECT o.option_value::int
    FROM pg_class c, pg_options_to_table(c.reloptions) o
    WHERE c.oid = to_regclass(quote_ident(idx)) AND o.option_name = 'm'), 16) >= 24 THEN 100 ELSE 200 END
$$;

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
  ELSIF to_regclass(quote_ident(vector_tenant_index_name('semantic_cache', match_org))) IS NOT NULL THEN
    -- The org's own index: the org as a literal so the planner can prove the partial index's predicate.
    PERFORM set_config('enable_sort', 'off', true);
    PERFORM set_config('hnsw.ef_search', vector_tenant_ef_search(vector_tenant_index_name('semantic_cache', match_org))::text, true);
    RETURN QUERY EXECUTE format($q$
      SELECT c.id, c.response, (1 - (c.embedding <=> $1))::float
      FROM semantic_cache c
      WHERE c.org_id = %L AND c.agent = $2 AND c.action = $3
        AND c.model = $4 AND c.prompt_version = $5 AND c.expires_at > now()
      ORDER BY %s <=> $1
      LIMIT 1$q$, match_org, vector_tenant_order_by(vector_tenant_index_name('semantic_cache', match_org), 'c'))
      USING query_embedding, match_agent, match_action, match_model, match_prompt_version;
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
    ELSIF to_regclass(quote_ident(vector_tenant_index_name('chat_facts', match_org))) IS NOT NULL THEN
      -- The org's own index: the org as a literal so the planner can prove the partial index's predicate.
      PERFORM set_config('enable_sort', 'off', true);
      PERFORM set_config('hnsw.ef_search', vector_tenant_ef_search(vector_tenant_index_name('chat_facts', match_org))::text, true);
      RETURN QUERY EXECUTE format($q$
        SELECT f.id,
               f.content,
               (1 - (f.embedding <=> $1))::float,
               jsonb_build_object('external_id', f.external_id, 'startup_id', f.startup_id, 'fact_type', f.fact_type,
                                  'confidence', f.confidence, 'expires_at', f.expires_at)
        FROM chat_facts f
        WHERE f.org_id = %L
          AND (f.expires_at IS NULL OR f.expires_at > now())
          AND ($4->>'startup_id' IS NULL OR f.startup_id = $4->>'startup_id')
          AND ($4->>'fact_type' IS NULL OR f.fact_type = $4->>'fact_type')
          AND 1 - (f.embedding <=> $1) >= $2
        ORDER BY %s <=> $1
        LIMIT $3$q$, match_org, vector_tenant_order_by(vector_tenant_index_name('chat_facts', match_org), 'f'))
        USING query_embedding, match_threshold, match_count, filter;
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
