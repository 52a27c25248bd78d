-- Retries one dead-letter entry, atomically: claims it and moves the job back to wait in the same call, so a
-- retry either happened whole or left the job, the entry and its keys exactly as they were. (A claim in one
-- call and BullMQ's move in the next left the claim's writes behind whenever the move failed: the job removed
-- or retried another way in between, or a Redis error; the caller was told 404 while its input was written,
-- the retry counted, the cancel marker and stream gone and, the job still failed, the entry held 30 s.)
-- The claim: the job must still sit in the failed set (its hash there too), its DLQ retry count must be the
-- one the caller read (so two reprocessors racing retry it once: the second finds it gone, or, once it failed
-- again, counted on) and under the limit, and it must still be of the required class. Then the retry is
-- counted, the error it is retried from recorded, and the caller's data written (a corrected input, or the trace
-- context of the request that retries it): only the one caller whose claim wins ever writes it.
-- A hold (`claimOf` = the failed set's score, `claimUntil`) is what the previous version wrote between its
-- claim and its move: still respected until it lapses, so a retry from a process of that version during a
-- rolling update is not retried twice. This script writes none: nothing comes between its claim and move.
-- A cancel marker is of the run it cancelled, which is over: left, it would cancel the retry at its claim.
-- So is the job's event stream (a streaming job's): its last entry is the failure that ended that run, which a
-- reader of the retried job, starting from the stream's first entry, would take for the end of the new run.
-- The move is BullMQ's retry of a failed job (bullmq 6.x commands/reprocessJob-9.lua with its includes
-- addJobInTargetList, addJobWithPriority, getPriorityScore, addBaseMarkerIfNeeded, isQueuePausedOrMaxed,
-- getOrSetMaxEvents, moveChildBackToParentDependencies; `Job.retry('failed')`, attempts kept), replayed here;
-- test/dlq-retry.test.ts ("exactly as BullMQ's own retry") compares it with BullMQ's script on the installed
-- version. Every check comes before the first write: nothing below the checks can refuse.
-- KEYS[1]: DLQ meta hash of the entry      KEYS[2]: the agent queue's failed sorted set
-- KEYS[3]: the job's hash                 KEYS[4]: the API's cancel marker of the job
-- KEYS[5]: the job's event stream
-- KEYS[6..12]: the agent queue's wait list, meta hash, active list, marker, prioritized set, priority counter
--   and events stream (BullMQ's)
-- KEYS[13]: the job's batch-tier record (batchKeys.job)  KEYS[14]: the pending set of the record's model
--   (batchKeys.queue). With a corrected input, a record still holding the old input's request or answer is cancelled:
--   a batch-tier job whose batch answered before it failed (or was cancelled) unread would be served that
--   answer, computed for the old input; cancelled, the retry records its new request (batch-add-4.lua replaces
--   a cancelled record) and a batch that holds the old one hands it nothing (batch-cancel-3.lua's state). An
--   answer stored that no attempt read (`done`, no `readBy`) was billed by Gemini all the same: the usage row the
--   collector priced for it (`bill`) is appended to KEYS[15] as it is dropped (batch-cancel-3.lua does the same).
-- KEYS[15]: the usage stream (usageStreamKey)
-- KEYS[16..20] (a flow child or pipeline step only): its BullMQ parent's hash, the parent queue's
-- waiting-children set, and the parent's unsuccessful set, failed hash and dependencies set. BullMQ's retry
-- puts a child back in its parent's dependencies but never moves a parent that has left waiting-children back:
-- a retry then would run (and bill) a result nobody reads.
-- ARGV[1]: job id
-- ARGV[2]: expected retry count, '' for any
-- ARGV[3]: max retries, -1 for no limit
-- ARGV[4]: required class, '' for any
-- ARGV[5]: class to store when the hash has none (classified lazily by the caller)
-- ARGV[6]: last error (the failed reason being retried)
-- ARGV[7]: now, epoch ms
-- ARGV[8]: TTL of the hash, seconds
-- ARGV[9]: the job's new data (JSON), '' to keep it
-- ARGV[10]: the wait list's push, 'LPUSH' or 'RPUSH' (a lifo job's)
-- ARGV[11]: the parent's id (with KEYS[16..20])
-- ARGV[12]: the job's creation time as the caller read it (BullMQ's `timestamp`): a job removed and added again
--   under the same id since is another job, which the caller's input (its read data with the new input) is not for
-- ARGV[13]: the usage stream entry's field name (with KEYS[15])
-- ARGV[14]: '1' when ARGV[9] keeps the job's input and only carries the retry's trace context (the job's batch-tier
--   record, of that same input, stays); absent or anything else: ARGV[9] holds a corrected input
-- Returns the new retry count, or -1 not failed, -2 count moved on (or held by a previous version's claim, or
-- the job is another incarnation than the one read),
-- -3 limit reached, -4 other class, -5 its parent no longer waits for it.
local rcall = redis.call
local id, jobKey = ARGV[1], KEYS[3]
local stay = rcall('ZSCORE', KEYS[2], id)
if not stay or rcall('EXISTS', jobKey) == 0 then
  return -1
end
if ARGV[12] and ARGV[12] ~= '' and rcall('HGET', jobKey, 'timestamp') ~= ARGV[12] then
  return -2
end
local m = rcall('HMGET', KEYS[1], 'retries', 'class', 'claimOf', 'claimUntil', 'ts')
-- A meta hash of another incarnation of this id (a job removed outside the DLQ, whose failure listener did not
-- run for the new one yet: dlq-record-1.lua drops it then) counts nothing for this job, as `toEntry` reads it.
if m[5] and ARGV[12] and ARGV[12] ~= '' and m[5] ~= ARGV[12] then
  rcall('DEL', KEYS[1])
  m = { false, false, false, false, false }
end
local retries = tonumber(m[1]) or 0
local class = m[2] or ARGV[5]
if ARGV[2] ~= '' and retries ~= tonumber(ARGV[2]) then
  return -2
end
if m[3] == stay and (tonumber(m[4]) or 0) > tonumber(ARGV[7]) then
  return -2
end
local max = tonumber(ARGV[3])
if max >= 0 and retries >= max then
  return -3
end
if ARGV[4] ~= '' and class ~= ARGV[4] then
  return -4
end
local child = #KEYS >= 20
if child and (rcall('EXISTS', KEYS[16]) == 0 or not rcall('ZSCORE', KEYS[17], ARGV[11])) then
  return -5
end
-- The parent the caller named is the one BullMQ's retry would put the child back under (the hash's).
if rcall('HGET', jobKey, 'parentKey') ~= (child and KEYS[16] or false) then
  return -2
end

rcall('HSET', KEYS[1], 'retries', retries + 1, 'class', class, 'lastError', ARGV[6], 'lastRetryAt', ARGV[7])
rcall('EXPIRE', KEYS[1], tonumber(ARGV[8]))
rcall('DEL', KEYS[4], KEYS[5])
if ARGV[9] ~= '' then
  rcall('HSET', jobKey, 'data', ARGV[9])
end
if ARGV[9] ~= '' and ARGV[14] ~= '1' then
  -- A fallback record holds neither (the retry runs standard with the new input), a cancelled one is dropped.
  local batchState = rcall('HGET', KEYS[13], 'state')
  if batchState == 'pending' or batchState == 'submitted' or batchState == 'done' or batchState == 'failed' then
    if batchState == 'done' and rcall('HEXISTS', KEYS[13], 'readBy') == 0 then
      local bill = rcall('HGET', KEYS[13], 'bill')
      if bill then rcall('XADD', KEYS[15], '*', ARGV[13], bill) end
    end
    rcall('ZREM', KEYS[14], id)
    rcall('HSET', KEYS[13], 'state', 'cancelled')
  end
end

-- BullMQ's reprocessJob, state 'failed', attempts kept.
rcall('ZREM', KEYS[2], id)
rcall('HDEL', jobKey, 'finishedOn', 'processedOn', 'failedReason')
local pausedOrMaxed = false
local q = rcall('HMGET', KEYS[7], 'paused', 'concurrency')
if q[1] then
  pausedOrMaxed = true
elseif q[2] then
  pausedOrMaxed = rcall('LLEN', KEYS[8]) >= tonumber(q[2])
end
local priority = tonumber(rcall('HGET', jobKey, 'priority')) or 0
if priority == 0 then
  rcall(ARGV[10], KEYS[6], id)
else
  rcall('ZADD', KEYS[10], priority * 0x100000000 + rcall('INCR', KEYS[11]) % 0x100000000, id)
end
if not pausedOrMaxed then
  rcall('ZADD', KEYS[9], 0, '0')
end
if child and (rcall('ZREM', KEYS[18], jobKey) == 1 or rcall('HDEL', KEYS[19], jobKey) == 1) then
  rcall('SADD', KEYS[20], jobKey)
end
local maxEvents = rcall('HGET', KEYS[7], 'opts.maxLenEvents')
if not maxEvents then
  maxEvents = 10000
  rcall('HSET', KEYS[7], 'opts.maxLenEvents', maxEvents)
end
rcall('XADD', KEYS[12], 'MAXLEN', '~', maxEvents, '*', 'event', 'waiting', 'jobId', id, 'prev', 'failed')
return retries + 1
