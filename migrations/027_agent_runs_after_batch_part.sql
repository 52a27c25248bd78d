-- A run served its batch's stored answer that then calls the standard tier (a route's retry or fallback after an
-- unusable batch answer) had that call folded into the attempt's row, part '' (the answer's row, written once
-- whichever run reads it, since Gemini billed it once): under the last call's tier, and a stalled re-run's own
-- call was lost with its duplicate '' row. Those calls now go in a row of their own, part 'standard:<n>', n being
-- the job's stalled count at the run's fetch (`afterBatchPart` in agent-runs.ts): each run's calls, at their tier
-- and price. Rows written before keep their part: they pass the new check.
ALTER TABLE agent_runs DROP CONSTRAINT agent_runs_part_check;
ALTER TABLE agent_runs ADD CONSTRAINT agent_runs_part_check
  CHECK (CASE WHEN state = 'delayed' THEN part <> '' ELSE part = '' OR part LIKE 'stalled:%' OR part LIKE 'standard:%' END);
