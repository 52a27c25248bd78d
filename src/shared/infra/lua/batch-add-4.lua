-- Records a batch-tier job's request as pending for its model's next batch, once per job incarnation: the same
-- job (a re-run while it waits, a crash after this call) keeps its record and state. A record of another
-- incarnation under the same id (a job removed, then re-created with the same idempotency key) or of a
-- cancelled job is replaced: its request, state and answer were the old job's. An answer the old job never read
-- (`done`, no `readBy`: it was removed while its answer waited) was billed by Gemini: its usage row (`bill`) is
-- appended to the usage stream as the record is replaced (its part is the batch's intent: one row, whoever appends).
-- KEYS[1] the job's batch HASH, KEYS[2] the model's pending ZSET, KEYS[3] the SET of models with pending jobs,
-- KEYS[4] the usage stream
-- ARGV[1] job id, ARGV[2] model, ARGV[3] inline request JSON, ARGV[4] deadline ms ('' = none), ARGV[5] now ms,
-- ARGV[6] ttl s of the job's record, ARGV[7] the job's creation time (its incarnation), ARGV[8] whose request it is
-- (JSON: org, agent, action, attempt; '' = unknown), so an answer the job no longer takes is still billed to it,
-- ARGV[9] the usage entry's field name
-- Returns the job's state ('pending' when this call added it).
local state = redis.call('HGET', KEYS[1], 'state')
if state then
  local ts = redis.call('HGET', KEYS[1], 'ts')
  -- A record without ts predates incarnations: taken as this job's.
  if state ~= 'cancelled' and (not ts or ts == ARGV[7]) then return state end
  if state == 'done' and redis.call('HEXISTS', KEYS[1], 'readBy') == 0 then
    local bill = redis.call('HGET', KEYS[1], 'bill')
    if bill then redis.call('XADD', KEYS[4], '*', ARGV[9], bill) end
  end
  redis.call('DEL', KEYS[1])
end
redis.call('HSET', KEYS[1], 'state', 'pending', 'model', ARGV[2], 'req', ARGV[3], 'addedAt', ARGV[5], 'ts', ARGV[7])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'deadlineAt', ARGV[4]) end
if ARGV[8] and ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'owner', ARGV[8]) end
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[2])
return 'pending'
