-- A run of an attempt can pay for a model call and then be delayed (rescheduled without using an attempt): a
-- route's primary answers unusably, billed, then its retry or fallback meets a provider 429 or an open breaker.
-- The attempt runs again under the same number and its row (written when it ends) carries only that run's calls:
-- the delayed run's were recorded nowhere, so the org's monthly budget and /v1/usage missed them, and a row under
-- the attempt's number would have been refused as a duplicate by the attempt's own row, or refused it.
-- `part` is a row's place within its attempt: '' for the attempt's own row (every row recorded before this
-- migration), a delayed part's own id otherwise (state 'delayed', made once when its row is built and carried in
-- its usage stream entry, so the sink's redelivery of that entry is still the same row).
ALTER TABLE agent_runs ADD COLUMN part text NOT NULL DEFAULT '';
ALTER TABLE agent_runs DROP CONSTRAINT agent_runs_job_attempt_key;
ALTER TABLE agent_runs ADD CONSTRAINT agent_runs_job_attempt_part_key UNIQUE (job_id, job_ts, attempt, part);
ALTER TABLE agent_runs DROP CONSTRAINT agent_runs_state_check;
ALTER TABLE agent_runs ADD CONSTRAINT agent_runs_state_check CHECK (state IN ('completed', 'failed', 'delayed'));
-- Only a delayed part has a part id, and it always has one.
ALTER TABLE agent_runs ADD CONSTRAINT agent_runs_part_check CHECK ((state = 'delayed') = (part <> ''));
