-- A job whose lock lapsed while its attempt ran (an event loop stall, a worker killed after its model call) is put
-- back in the wait list by BullMQ's stalled check and runs again under the same attempt number (`attemptsMade` is
-- unchanged for a stalled job), calling the model again: Gemini bills both runs. Both rows were keyed
-- (job_id, job_ts, attempt, ''), so the second one met the first in the unique key and was dropped as a duplicate:
-- quotas and /v1/usage missed one run's calls. A run fetched after the job stalled (BullMQ's stalled counter above
-- 0) keys its attempt row `run:<n>`, n its fetch number (BullMQ's attemptsStarted, one per fetch, so each run's
-- own); a job that never stalled keeps ''. The row is built once per run and carried in its usage stream entry, so
-- the sink's redelivery is still the same row. The unique key is unchanged (workers of the previous release write
-- only '' and delayed parts, which this check still takes: no need to stop them first).
ALTER TABLE agent_runs DROP CONSTRAINT agent_runs_part_check;
ALTER TABLE agent_runs ADD CONSTRAINT agent_runs_part_check CHECK (
  CASE WHEN state = 'delayed' THEN part <> '' ELSE part = '' OR part ~ '^run:[0-9]+$' END
);
