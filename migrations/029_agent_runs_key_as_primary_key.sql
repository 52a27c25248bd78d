-- `id` (bigserial, the primary key since migration 005) was read by no query: a row is named by its key,
-- (job_id, job_ts, attempt, part), which ON CONFLICT already keeps unique. Each row still paid for it: a sequence
-- nextval and one more btree insert in the usage sink's INSERT (PGlite beside the worker: 28.1-30.6 -> 25.7-28.5 us
-- a row in 450-row batches, four scratch runs), and 8 bytes plus an index on disk. The key becomes the primary key.
-- Postgres cannot hand a unique constraint's index to a primary key (ADD PRIMARY KEY USING INDEX refuses an index a
-- constraint owns), so the key's index is built once more as the primary key's, then the unique one dropped: an
-- index build under this migration's lock (the usage rows wait in their Redis Stream meanwhile), no table rewrite
-- (DROP COLUMN only marks the column dropped). The column's sequence goes with it.
ALTER TABLE agent_runs DROP CONSTRAINT agent_runs_pkey;
ALTER TABLE agent_runs DROP COLUMN id;
ALTER TABLE agent_runs ADD CONSTRAINT agent_runs_pkey PRIMARY KEY (job_id, job_ts, attempt, part);
ALTER TABLE agent_runs DROP CONSTRAINT agent_runs_job_attempt_part_key;
