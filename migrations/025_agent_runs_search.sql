-- POST /v1/knowledge/search embeds the caller's query (a Gemini call the org pays for) and recorded nothing. Each
-- such search now records a row of kind 'search', as an ingest batch does (migration 024): job_id 'search:<uuid>',
-- attempt 1, job_ts 0, agent 'knowledge', action 'search', the embedding model, its estimated embedding tokens and
-- cost (migration 023) and no model-call cost. Like an ingest it is no job: what describes jobs leaves it out.
-- Migration 024's check was made inline, so Postgres named it agent_runs_kind_check.
ALTER TABLE agent_runs DROP CONSTRAINT agent_runs_kind_check;
ALTER TABLE agent_runs ADD CONSTRAINT agent_runs_kind_check CHECK (kind IN ('attempt', 'ingest', 'search'));
