CREATE TABLE semantic_cache (
  id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id         text NOT NULL,
  agent          text NOT NULL,
  action         text NOT NULL,
  model          text NOT NULL,
  prompt_version integer NOT NULL,
  query          text NOT NULL,
  embedding      vector(768) NOT NULL,
  response       jsonb NOT NULL,
  created_at     timestamptz NOT NULL DEFAULT now(),
  expires_at     timestamptz NOT NULL
);
CREATE INDEX semantic_cache_embedding_idx ON semantic_cache USING hnsw (embedding vector_cosine_ops);
-- Lookups are hard-filtered by this scope; when the scope is selective the planner uses this index and
-- ranks the few rows exactly, which also avoids HNSW post-filtering dropping a tenant's rows.
CREATE INDEX semantic_cache_scope_idx ON semantic_cache (org_id, agent, action, model, prompt_version);
CREATE INDEX semantic_cache_expires_idx ON semantic_cache (expires_at);
