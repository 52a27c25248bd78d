-- An org's knowledge ingestion (POST /v1/knowledge/:table, npm run ingest --org) embeds every document it writes,
-- and Gemini bills those calls like any other: they were in no ledger, so /v1/usage and the monthly budget missed
-- them. Each written batch now records a row of its own, in the same statement as the batch's documents (so a
-- batch written is a batch recorded): `kind` 'ingest', job_id 'ingest:<uuid>' (one per ingest request; the batch's
-- ordinal as attempt; job_ts 0, so no day's job count sees it), agent 'knowledge', action 'ingest:<table>', the
-- embedding model, its estimated embedding tokens and cost (migration 023) and no model-call cost. `kind` keeps
-- these rows out of what describes jobs (the job count, the cache hit rate, the attempts' durations); every row
-- recorded before this migration is an attempt (or a delayed part of one).
ALTER TABLE agent_runs ADD COLUMN kind text NOT NULL DEFAULT 'attempt' CHECK (kind IN ('attempt', 'ingest'));
