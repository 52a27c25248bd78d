-- One page of an org's jobs, newest first, read from the org's job index and the BullMQ job hashes.
-- KEYS[1]: org job index (ZSET id -> enqueue ms)
-- KEYS[2..7]: the queue's completed, failed, delayed, prioritized, waiting-children and active keys
-- ARGV[1]: job hash key prefix, ARGV[2]: cancelled-tombstone key prefix
-- ARGV[3]: max score (inclusive; "+inf" for the first page), ARGV[4]: min score ("-inf" or the `since` ms)
-- ARGV[5]: the last member read at the max score ("" for the first page), ARGV[6]: page size
-- ARGV[7]: state filter ("" for any), ARGV[8]: job name prefix filter ("Agent:" or "")
-- ARGV[9]: lowest delayed score of a job parked for the fair dispatcher (listed as "waiting", "prioritized" for a
-- job with a priority as GET shows it (park.ts parkedState), or "delayed" while its own `delayMs` runs),
-- ARGV[10]: the fair dispatcher's job meta key prefix
-- Returns {next max score, last member read, members scanned, rows}; a row is
-- {id, state, name, progress, returnvalue, failedReason, attemptsMade, timestamp, finishedOn, tombstone}.
-- Ids whose job is gone (retention) and left no tombstone are removed from the index on the way.
-- State is found like BullMQ's getState, except that a job in no set is "waiting": the wait list can be
-- long and LPOS on it is O(N) per job.
local rcall = redis.call

-- Byte order, as a sorted set orders members of one score (Lua's own < follows the server's locale).
local function before(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

-- How many members at `score` come at or before `last` in this listing's order (REV: members of one score in
-- reverse byte order), counted now, in this call: the cursor carries the last member, not an offset, because
-- members already listed may leave the index (retention, or another listing's ZREM) between two pages, and an
-- offset counted on the previous page would then skip as many live jobs. `last` itself may be gone: a binary
-- search over the members at that score (ranks `above` to `above + n - 1`) finds where it was.
local function seenAt(key, score, last)
  if last == '' then return 0 end
  local above = rcall('ZCOUNT', key, '(' .. score, '+inf')
  local lo, hi = 0, rcall('ZCOUNT', key, score, score)
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    local m = rcall('ZRANGE', key, above + mid, above + mid, 'REV')[1]
    if before(m, last) then hi = mid else lo = mid + 1 end
  end
  return lo
end

local skip = ARGV[3] == '+inf' and 0 or seenAt(KEYS[1], ARGV[3], ARGV[5])
local page = rcall('ZRANGE', KEYS[1], ARGV[3], ARGV[4], 'BYSCORE', 'REV', 'LIMIT', skip, ARGV[6], 'WITHSCORES')
local lastScore = ARGV[3]
local lastId = ARGV[5]
local rows = {}
local wantState = ARGV[7]
local namePrefix = ARGV[8]
for i = 1, #page, 2 do
  local id = page[i]
  local score = page[i + 1]
  lastScore = score
  lastId = id
  local h = rcall('HMGET', ARGV[1] .. id, 'name', 'progress', 'returnvalue', 'failedReason', 'attemptsMade', 'timestamp', 'finishedOn', 'priority')
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
    -- Parked jobs wait for the fair dispatcher: to the caller they are waiting (prioritized with a priority, as
    -- BullMQ's prioritized set shows them once dispatched), not delayed.
    state = 'delayed'
    if tonumber(rcall('ZSCORE', KEYS[4], id)) >= tonumber(ARGV[9]) then
      local fm = rcall('HMGET', ARGV[10] .. id, 'st', 'r')
      if not (fm[1] == 'timer' and fm[2] == 'delayed') then
        if (tonumber(h[8]) or 0) > 0 then state = 'prioritized' else state = 'waiting' end
      end
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
    local nameOk = namePrefix == '' or (h[1] and string.sub(h[1], 1, #namePrefix) == namePrefix)
    if tomb and namePrefix ~= '' then nameOk = true end
    if (wantState == '' or wantState == state) and nameOk then
      rows[#rows + 1] = {id, state, h[1] or false, h[2] or false, h[3] or false, h[4] or false, h[5] or false, h[6] or false, h[7] or false, tomb}
    end
  end
end
return {lastScore, lastId, #page / 2, rows}
