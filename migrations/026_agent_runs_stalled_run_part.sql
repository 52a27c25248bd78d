-- A job whose lock lapsed (its worker's event loop blocked, its Redis connection cut) is handed by BullMQ's stalled
-- check to another fetch while its first run may still be calling the model: the same attempt (attemptsMade is
-- unchanged) runs twice and is paid twice. Both runs wrote the attempt's own row, part '', and the second one was
-- refused as a duplicate (ON CONFLICT DO NOTHING): its cost was missing from the ledger, /v1/usage and the budget.
-- A run fetched after a stall now writes its own row under part 'stalled:<n>', n being BullMQ's count of the job's
-- stalls (`stc`) when it was fetched: every run of an attempt that ends it has a row, and the sink's redelivery of a
-- run's entry (the part rides in it) is still that one row. A delayed part keeps its id; a completed or failed row
-- has no other part.
ALTER TABLE agent_runs DROP CONSTRAINT agent_runs_part_check;
ALTER TABLE agent_runs ADD CONSTRAINT agent_runs_part_check
  CHECK (CASE WHEN state = 'delayed' THEN part <> '' ELSE part = '' OR part LIKE 'stalled:%' END);
