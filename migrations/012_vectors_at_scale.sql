-- Vectors at scale: the similarity functions order through HNSW at any scope size and selectivity
-- (README "Vectors at scale" has the measurements behind each setting).
--
-- Past ~20k rows in one scope the planner used to prefer the scope btree + an exact sort (160-280 ms in
-- PGlite, growing linearly with the scope). enable_sort = off removes that plan for the one query inside
-- each function (function-level SET clauses touch nothing else): ORDER BY distance LIMIT k can then only
-- be answered through the HNSW index, whatever the statistics say, so the plan shape does not depend on
-- table or scope size. pgvector >= 0.8's iterative scan keeps walking the graph until enough rows pass
-- the tenant filter (strict_order: results come back in exact distance order, so LIMIT 1 is the nearest
-- the graph found), and hnsw.max_scan_tuples bounds the walk for a tiny scope in a huge table.
--
-- Storage stays vector(768): halfvec halves the bytes but measured ~7x slower to build in PGlite (WASM has
-- no hardware half-float conversion), which would put a 100k build at hours; see the README.
ALTER FUNCTION match_documents(vector, text, text, float, int, jsonb) SET enable_sort = off;
ALTER FUNCTION semantic_cache_nearest(vector, text, text, text, text, int) SET enable_sort = off;
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
