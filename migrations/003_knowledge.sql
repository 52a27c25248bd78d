-- Knowledge tables for retrieval. 768 dimensions = gemini-embedding-001 with outputDimensionality 768.
CREATE TABLE industry_packs (
  id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  external_id  text NOT NULL UNIQUE,
  industry     text NOT NULL,
  display_name text NOT NULL,
  description  text NOT NULL DEFAULT '',
  is_active    boolean NOT NULL DEFAULT true,
  embedding    vector(768) NOT NULL,
  updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX industry_packs_embedding_idx ON industry_packs USING hnsw (embedding vector_cosine_ops);

-- org_id NULL = a global playbook every org sees.
CREATE TABLE playbooks (
  id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  external_id text NOT NULL UNIQUE,
  org_id      text NULL,
  title       text NOT NULL,
  description text NOT NULL DEFAULT '',
  type        text NULL,
  difficulty  text NULL,
  is_active   boolean NOT NULL DEFAULT true,
  embedding   vector(768) NOT NULL,
  updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX playbooks_embedding_idx ON playbooks USING hnsw (embedding vector_cosine_ops);
CREATE INDEX playbooks_org_idx ON playbooks (org_id);

-- Facts learned from an org's conversations: always private to that org.
CREATE TABLE chat_facts (
  id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  external_id text NOT NULL,
  org_id      text NOT NULL,
  startup_id  text NULL,
  content     text NOT NULL,
  fact_type   text NULL,
  confidence  real NULL CHECK (confidence IS NULL OR (confidence >= 0 AND confidence <= 1)),
  expires_at  timestamptz NULL,
  embedding   vector(768) NOT NULL,
  updated_at  timestamptz NOT NULL DEFAULT now(),
  UNIQUE (org_id, external_id)
);
CREATE INDEX chat_facts_embedding_idx ON chat_facts USING hnsw (embedding vector_cosine_ops);
CREATE INDEX chat_facts_org_startup_idx ON chat_facts (org_id, startup_id);
