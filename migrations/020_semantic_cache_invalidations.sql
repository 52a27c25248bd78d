-- When an org's (or every org's: '') cached answers of an agent (or of every agent: '') were last invalidated
-- (DELETE /v1/cache, a knowledge ingest). A semantic-cache store of an answer whose lookup came before that time is
-- refused: the answer was computed from what the invalidation replaced, and stored after the invalidation's DELETE
-- it would be served until its TTL.
CREATE TABLE semantic_cache_invalidations (
  org_id text NOT NULL,
  agent  text NOT NULL,
  at     timestamptz NOT NULL,
  PRIMARY KEY (org_id, agent)
);
