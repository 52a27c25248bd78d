-- Every similarity query here is filtered (org, scope, expiry). A plain HNSW scan takes its ef_search
-- nearest candidates first and filters afterwards, so a small tenant's rows can silently drop out once
-- other tenants' rows crowd the neighbourhood. pgvector >= 0.8 can keep scanning until enough rows pass
-- the filter; turn that on for exactly these functions (older pgvector keeps the plain behaviour).

-- Nearest cached response within one semantic-cache scope, or no row.
CREATE OR REPLACE FUNCTION semantic_cache_nearest(
  query_embedding vector(768),
  match_org       text,
  match_agent     text,
  match_action    text,
  match_model     text,
  match_prompt_version int
) RETURNS TABLE (id uuid, response jsonb, similarity float)
LANGUAGE sql STABLE
AS $$
  SELECT c.id, c.response, (1 - (c.embedding <=> query_embedding))::float
  FROM semantic_cache c
  WHERE c.org_id = match_org AND c.agent = match_agent AND c.action = match_action
    AND c.model = match_model AND c.prompt_version = match_prompt_version AND c.expires_at > now()
  ORDER BY c.embedding <=> query_embedding
  LIMIT 1
$$;

DO $$
BEGIN
  IF (SELECT string_to_array(extversion, '.')::int[] >= ARRAY[0, 8, 0] FROM pg_extension WHERE extname = 'vector') THEN
    ALTER FUNCTION match_documents(vector, text, text, float, int, jsonb) SET hnsw.iterative_scan = 'strict_order';
    ALTER FUNCTION semantic_cache_nearest(vector, text, text, text, text, int) SET hnsw.iterative_scan = 'strict_order';
  END IF;
END;
$$;
