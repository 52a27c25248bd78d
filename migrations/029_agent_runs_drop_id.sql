-- `id` (bigserial, the primary key since migration 005) was read by no query: a row is named by its key,
-- (job_id, job_ts, attempt, part), which the unique constraint of migration 022 keeps and ON CONFLICT names. Each row
-- still paid for it: a sequence nextval and one more btree insert in the usage sink's INSERT (PGlite beside the
-- worker: 28.1-30.6 -> 25.7-28.5 us a row in 450-row batches, four scratch runs, measured with the key made the
-- primary key in the column's place: the same index count), and 8 bytes plus an index on disk.
-- Dropping the column drops its primary key index and its sequence; it only marks the column dropped (no table
-- rewrite) and builds no index, so the lock it takes is brief however many rows the table holds. The key is not made
-- the primary key: Postgres cannot hand a unique constraint's index to one (ADD PRIMARY KEY USING INDEX refuses an
-- index a constraint owns), and building another would hold the table's lock for the whole build. Logical
-- replication, which needs a replica identity for UPDATE and DELETE, is given the key's index as the table's.
ALTER TABLE agent_runs DROP COLUMN id;
ALTER TABLE agent_runs REPLICA IDENTITY USING INDEX agent_runs_job_attempt_part_key;
