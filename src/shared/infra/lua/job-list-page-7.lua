-- One page of an org's jobs, newest first, read from the org's job index and the BullMQ job hashes.
-- KEYS[1]: org job index (ZSET id -> enqueue ms)
-- KEYS[2..7]: the queue's completed, failed, delayed, prioritized, waiting-children and active keys
-- ARGV[1]: job hash key prefix, ARGV[2]: cancelled-tombstone key prefix
-- ARGV[3]: max score (inclusive; "+inf" for the first page), ARGV[4]: min score ("-inf" or the `since` ms)
-- ARGV[5]: members at the max score already returned, ARGV[6]: page size
-- ARGV[7]: state filter ("" for any), ARGV[8]: job name prefix filter ("Agent:" or "")
-- ARGV[9]: lowest delayed score of a job parked for the fair dispatcher (listed as "waiting", or "delayed"
-- while its own `delayMs` runs), ARGV[10]: the fair dispatcher's job meta key prefix
-- Returns {next max score, next skip, members scanned, rows}; a row is
-- {id, state, name, progress, returnvalue, failedReason, attemptsMade, timestamp, finishedOn, tombstone}.
-- Ids whose job is gone (retention) and left no tombstone are removed from the index on the way.
-- State is found like BullMQ's getState, except that a job in no set is "waiting": the wait list can be
-- long and LPOS on it is O(N) per job.
local rcall = redis.call
local page = rcall('ZRANGE', KEYS[1], ARGV[3], ARGV[4], 'BYSCORE', 'REV', 'LIMIT', ARGV[5], ARGV[6], 'WITHSCORES')
local lastScore = ARGV[3]
local skip = tonumber(ARGV[5])
local rows = {}
local wantState = ARGV[7]
local namePrefix = ARGV[8]
for i = 1, #page, 2 do
  local id = page[i]
  local score = page[i + 1]
  local h = rcall('HMGET', ARGV[1] .. id, 'name', 'progress', 'returnvalue', 'failedReason', 'attemptsMade', 'timestamp', 'finishedOn')
  local state
  local tomb = false
  if not h[1] then
    tomb = rcall('GET', ARGV[2] .. id)
    if tomb then state = 'cancelled' end
  elseif rcall('ZSCORE', KEYS[2], id) then
    state = 'completed'
  elseif rcall('ZSCORE', KEYS[3], id) then
    if h[4] == 'cancelled' then state = 'cancelled' else state = 'failed' end
  elseif rcall('ZSCORE', KEYS[4], id) then
    -- Parked jobs wait for the fair dispatcher: to the caller they are waiting, not delayed.
    state = 'delayed'
    if tonumber(rcall('ZSCORE', KEYS[4], id)) >= tonumber(ARGV[9]) then
      local fm = rcall('HMGET', ARGV[10] .. id, 'st', 'r')
      if not (fm[1] == 'timer' and fm[2] == 'delayed') then state = 'waiting' end
    end
  elseif rcall('ZSCORE', KEYS[5], id) then
    state = 'prioritized'
  elseif rcall('ZSCORE', KEYS[6], id) then
    state = 'waiting-children'
  elseif rcall('LPOS', KEYS[7], id) then
    state = 'active'
  else
    state = 'waiting'
  end
  if not state then
    rcall('ZREM', KEYS[1], id)
  else
    if score == lastScore then skip = skip + 1 else lastScore = score; skip = 1 end
    local nameOk = namePrefix == '' or (h[1] and string.sub(h[1], 1, #namePrefix) == namePrefix)
    if tomb and namePrefix ~= '' then nameOk = true end
    if (wantState == '' or wantState == state) and nameOk then
      rows[#rows + 1] = {id, state, h[1] or false, h[2] or false, h[3] or false, h[4] or false, h[5] or false, h[6] or false, h[7] or false, tomb}
    end
  end
end
return {lastScore, skip, #page / 2, rows}
