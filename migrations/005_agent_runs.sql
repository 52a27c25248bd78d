-- One row per finished job attempt. UNIQUE (job_id, attempt) makes recording idempotent when BullMQ
-- re-delivers an attempt (stalled job, crash between finishing and acking).
CREATE TABLE agent_runs (
  id            bigserial PRIMARY KEY,
  job_id        text NOT NULL,
  attempt       integer NOT NULL,
  org_id        text NOT NULL,
  agent         text NOT NULL,
  action        text NOT NULL,
  model         text NOT NULL,
  state         text NOT NULL CHECK (state IN ('completed', 'failed')),
  input_tokens  integer NOT NULL DEFAULT 0,
  output_tokens integer NOT NULL DEFAULT 0,
  cost_usd      numeric(12, 8) NOT NULL DEFAULT 0,
  duration_ms   integer NOT NULL DEFAULT 0,
  cache_hit     text NULL,
  error         text NULL,
  request_id    text NULL,
  created_at    timestamptz NOT NULL DEFAULT now(),
  UNIQUE (job_id, attempt)
);
CREATE INDEX agent_runs_org_created_idx ON agent_runs (org_id, created_at);
