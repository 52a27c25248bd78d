-- A job id can name two jobs over time: an idempotency key sent again after its job was removed (completed jobs
-- are kept for a day or the last 10,000) makes a new job under the same id. Its attempts were refused as
-- duplicates of the old job's by UNIQUE (job_id, attempt), so their usage never reached quotas or /v1/usage.
-- `job_ts` is the job's creation time (BullMQ's `timestamp`, ms), the same for every attempt and re-delivery of
-- one job: recording stays idempotent per attempt of a job, and the new job's attempts are rows of their own.
-- Rows recorded before this migration keep 0.
ALTER TABLE agent_runs ADD COLUMN job_ts bigint NOT NULL DEFAULT 0;
ALTER TABLE agent_runs DROP CONSTRAINT agent_runs_job_id_attempt_key;
ALTER TABLE agent_runs ADD CONSTRAINT agent_runs_job_attempt_key UNIQUE (job_id, job_ts, attempt);
