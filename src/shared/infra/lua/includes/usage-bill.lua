-- A flow child's (or pipeline step's) usage row, summed on its hashes as the row goes into the usage stream: the
-- parent (the fan-out flow or pipeline run) reads a child's cost from these fields, which are so the sums of the
-- child's rows in agent_runs. Included by usage-bill-3.lua (a row the processor appends) and result-cache-set-8.lua
-- (the attempt's row its result cache store appends): no round trip of its own either way.
-- Only the job incarnation that wrote the row is charged (the hash's BullMQ `timestamp`): a hash that is gone (the
-- job removed while it ran) is not re-created as a stray hash holding these fields alone, nor is a parent's that is
-- gone (removed: nothing reads it).
-- Each row is summed once: ioredis sends a script again after its connection dropped before the reply, though Redis
-- may have run it (the usage stream then has the row twice, agent_runs still one row; until 2026-12-07 the hashes
-- counted it twice). The row's marker (`billedRowField`: its attempt and part, the incarnation being the hash's) is
-- set on the job's hash by the call that sums it, and a call that finds it sums nothing. It lives as long as that
-- hash (the job's retention), the one every sum here is gated on: a call that finds neither adds nothing.
-- The same marker decides the row's stream entry: a call that finds it appends none (returns false), as the call
-- that set it appended the row (until 2026-12-07 the re-sent call's entry was the row's second, which the sink
-- dropped: agent_runs keeps (job_id, job_ts, attempt, part) once, the marker's key). A call that finds no hash of
-- the row's incarnation cannot tell and appends it (true): the sink keeps the row once either way.
-- jobKey: the job's BullMQ hash; parentKey: its parent's (`job.parentKey`); argv: the script's ARGV; at: index of
--   the bill's first argument in it: the job's creation time, the job's own field ('' = none), the row's cost (USD),
--   the parent's cost field for this child ('' = none), the parent's embedding tokens field for this child, the
--   row's embedding tokens, the parent's embedding cost field for this child, the row's embedding cost (USD), the
--   row's marker field on the job's hash
-- Returns whether the caller appends the row (false: a call before this one did).
local function usageBill(jobKey, parentKey, argv, at)
  if redis.call('HGET', jobKey, 'timestamp') ~= argv[at] then return true end
  if redis.call('HSETNX', jobKey, argv[at + 8], 1) == 0 then return false end
  local cost = tonumber(argv[at + 2])
  if argv[at + 1] ~= '' and cost ~= 0 then redis.call('HINCRBYFLOAT', jobKey, argv[at + 1], argv[at + 2]) end
  if redis.call('EXISTS', parentKey) == 0 then return true end
  if argv[at + 3] ~= '' and cost ~= 0 then redis.call('HINCRBYFLOAT', parentKey, argv[at + 3], argv[at + 2]) end
  if tonumber(argv[at + 5]) > 0 then
    redis.call('HINCRBY', parentKey, argv[at + 4], argv[at + 5])
    redis.call('HINCRBYFLOAT', parentKey, argv[at + 6], argv[at + 7])
  end
  return true
end
