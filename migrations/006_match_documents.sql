-- Similarity search over the knowledge tables. The table is chosen from a FIXED allowlist with
-- IF/ELSIF, never by building SQL from match_table, so a caller cannot reach any other table.
-- Tenant rules live here, next to the data: chat_facts only ever match match_org (and are dropped
-- once expired); playbooks are global (org_id NULL) or match_org's own.
-- filter keys: industry_packs {industry}; playbooks {type, difficulty}; chat_facts {startup_id, fact_type}.
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

  ELSE
    RAISE EXCEPTION 'match_documents: unknown table "%"', match_table USING ERRCODE = '22023';
  END IF;
END;
$$;
