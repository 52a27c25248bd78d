-- Part of fair-core-N.lua, pasted where it says `--- @include "fair-lanes"` (lua.ts readLua): lanes ("<org>|<model>"), the orgs' plans and virtual times, activation, sleep, cap blocks, timers and slots.
-- Uses the locals the script defines before that line (rcall, now, the keys, and the parts included earlier).

-- Removes `id` from the ZSET `key` and, when it was there, takes it off `org`'s count in the HASH `counts`:
-- leases and in-flight slots, timers and an org's timed jobs. True when it was there.
local function zremCounted(key, counts, id, org)
  if rcall('ZREM', key, id) == 0 then return false end
  uncount(counts, org, 1)
  return true
end

-- Drops a finished job's slot: its lease and its org's in-flight count; true when it held one. Slots are keyed by
-- job id (the lease), so freeing twice or after a sweep never double counts. Waking the org's lanes that wait for
-- a slot is left to the caller (freeSlot, wakeReleased below). Here, not in fair-buffer, as zremCounted: the common
-- claim and release answer before these parts (each function created costs Redis time in every call that gets that far).
local function dropLease(id, org) return zremCounted(K_LEASES, K_INFLIGHT, id, org) end

-- Lane id is "<org>|<model>"; model names never contain '|' (checked in TS), org ids may.
local function splitLane(lane) return string.match(lane, '^(.*)|([^|]*)$') end

-- Read on first use: most calls (claim, release, a dispatch with nothing due) never need it.
local gvtValue = nil
local gvtDirty = false
local function gvt()
  if gvtValue == nil then gvtValue = tonumber(rcall('GET', K_GVT)) or 0 end
  return gvtValue
end


-- Sets an org's virtual time and moves all of its active lanes with it (they share one vt). `lanes`: the ones to
-- move when the caller knows them (a dispatch's run, below: its one lane, or none once it left the race).
local function setVt(org, v, lanes)
  -- Formatted once for the HSET and every lane's ZADD (a `%.17g` format is ~5,000 Redis instructions).
  local s = fmt(v)
  rcall('HSET', K_VT, org, s)
  for _, l in ipairs(lanes or orgLanes(org)) do
    rcall('ZADD', K_LANES, 'XX', s, l)
    firstSeen[K_LANES] = nil
  end
end

-- An org (re)joining the race starts at the global virtual time: it is owed nothing for the time it was
-- idle or blocked (no burst that starves others) and owes nothing either (a newcomer is not starved).
local function catchUpVt(org)
  local v = tonumber(rcall('HGET', K_VT, org)) or 0
  if v < gvt() then
    v = gvt()
    setVt(org, v)
  end
  return v
end

-- Orgs whose cap-blocked set this call knows to be empty (read once, or emptied; forgotten on SADD): a release
-- of many jobs of one org reads it once.
local capblkEmpty = {}

-- Lanes a dispatch's wakeSleepers took out of the sleepers (lane -> true, and listed in order): left in the sleep set
-- with their reason and start until the dispatch's end, where those it did not put back to sleep (sleepLane) leave
-- in one ZREM and two HDELs (dispatch). A throttled lane's wake-up puts it back to sleep in the same call, and its
-- ZREM and two HDELs were 3 of the wake-up's ~110 commands for nothing: the ZADD and two HSETs that follow write the
-- same fields. Within the dispatch nothing else reads them for such a lane but activate and unsleep (told by this
-- table) and the next wake-up's read (nextWake, after they left).
local sleepsWoken = {}

-- Makes a non-empty lane a candidate unless it already is one, or sleeps, or waits for an org slot.
-- `woken`: the caller just took it out of the sleepers (no need to ask).
-- The race's top two as this call read them (firstSeen), when nothing wrote to it since and it held fewer than two
-- lanes, are the whole race: whether it holds the lane needs no ZSCORE, and its top two after the ZADD are known
-- (a dispatch's first pick then reads nothing). A throttled lane's wake-up read both (2 of its commands). A tie of
-- scores is ordered by the members' bytes in Redis: the top is then read again.
local function activate(lane, org, woken)
  local whole = firstSeen[K_LANES]
  if whole and #whole >= 4 then whole = nil end
  local raced
  if whole then raced = whole[1] == lane else raced = rcall('ZSCORE', K_LANES, lane) end
  if raced or (not woken and not sleepsWoken[lane] and rcall('ZSCORE', K_SLEEP, lane)) or (not capblkEmpty[org] and rcall('SISMEMBER', P_CAPBLK .. org, lane) == 1) then
    return
  end
  local v = catchUpVt(org)
  -- catchUpVt moved the org's lanes in the race, if any: not known any more (setVt forgot it).
  if firstSeen[K_LANES] == nil then whole = nil end
  local s = fmt(v)
  rcall('ZADD', K_LANES, s, lane)
  firstSeen[K_LANES] = nil
  if whole and #whole == 0 then
    firstSeen[K_LANES] = { lane, s }
  elseif whole then
    local other = tonumber(whole[2])
    if v < other then firstSeen[K_LANES] = { lane, s, whole[1], whole[2] } end
    if v > other then firstSeen[K_LANES] = { whole[1], whole[2], lane, s } end
  end
end

-- Takes a lane out of the sleepers, adding the time it slept to its org's throttled seconds (a metric).
-- `deferred`: a member of the sleep set the caller just read (wakeSleepers): its removal waits (sleepsWoken).
local function unsleep(lane, deferred)
  if sleepsWoken[lane] then return false end
  if deferred then
    sleepsWoken[lane] = true
    sleepsWoken[#sleepsWoken + 1] = lane
  elseif rcall('ZREM', K_SLEEP, lane) == 0 then
    return false
  end
  firstSeen[K_SLEEP] = nil
  if not deferred then rcall('HDEL', K_SLEEPWHY, lane) end
  local since = tonumber(rcall('HGET', K_SLEEPSTART, lane))
  if since then
    if not deferred then rcall('HDEL', K_SLEEPSTART, lane) end
    rcall('HINCRBYFLOAT', K_THROTTLED, splitLane(lane), string.format('%.3f', math.max(0, now - since) / 1000))
  end
  return true
end

-- True when the lane was empty (and is now forgotten).
local function dropLaneIfEmpty(lane, org)
  if rcall('EXISTS', P_LANE .. lane) == 0 then
    rcall('ZREM', K_LANES, lane)
    firstSeen[K_LANES] = nil
    unsleep(lane)
    rcall('SREM', P_CAPBLK .. org, lane)
    rcall('SREM', P_OLANES .. org, lane)
    olanesCache[org] = nil
    return true
  end
  return false
end

-- Score: BullMQ priority first (0 first, like BullMQ's wait list before prioritized), then FIFO by a
-- global sequence (global so an org's lanes can be merged in arrival order). priority <= 2^21 and
-- seq < 2^31 keep the score an exact double.
local function laneScore(prio, seq) return fmt(prio * 2147483648 + seq) end

local function pushJob(id, org, model, prio, seq)
  local lane = laneOf(org, model)
  rcall('ZADD', P_LANE .. lane, laneScore(prio, seq), id)
  rcall('HSET', P_JOB .. id, 'st', 'lane')
  if rcall('SADD', P_OLANES .. org, lane) == 1 then olanesCache[org] = nil end
  activate(lane, org)
end

local function wakeCapBlocked(org)
  if capblkEmpty[org] then return end
  local key = P_CAPBLK .. org
  local lanes = rcall('SMEMBERS', key)
  if #lanes > 0 then
    rcall('DEL', key)
    for _, l in ipairs(lanes) do activate(l, org) end
  end
  capblkEmpty[org] = true
end

local function freeSlot(id, org)
  if not dropLease(id, org) then return false end
  wakeCapBlocked(org)
  return true
end

-- The rest of a release (releaseSlots): the capped lanes of the orgs it gave a slot back are woken (the others are
-- known to have none: not read again). How many slots it freed.
local function wakeReleased(r)
  for _, org in ipairs(r.orgs) do
    if r.capped[org] then wakeCapBlocked(org) else capblkEmpty[org] = true end
  end
  return r.freed
end

local function addTimer(id, org, at, reason)
  if rcall('ZADD', K_TIMERS, fmt(at), id) == 1 then rcall('HINCRBY', K_OTIMERS, org, 1) end
  firstSeen[K_TIMERS] = nil
  rcall('HSET', P_JOB .. id, 'st', 'timer', 'r', reason)
end

local function removeTimer(id, org)
  firstSeen[K_TIMERS] = nil
  return zremCounted(K_TIMERS, K_OTIMERS, id, org)
end

local function removeFromLane(id, org, model)
  local lane = laneOf(org, model)
  local removed = rcall('ZREM', P_LANE .. lane, id) == 1
  dropLaneIfEmpty(lane, org)
  return removed
end

local function sleepLane(lane, untilMs, why)
  rcall('ZREM', K_LANES, lane)
  firstSeen[K_LANES] = nil
  rcall('ZADD', K_SLEEP, fmt(untilMs), lane)
  firstSeen[K_SLEEP] = nil
  rcall('HSET', K_SLEEPWHY, lane, why)
  if sleepsWoken[lane] then
    -- Woken in this call (unsleep): that sleep ended there, this one starts now (its start is still stored).
    sleepsWoken[lane] = nil
    rcall('HSET', K_SLEEPSTART, lane, now)
  else
    rcall('HSETNX', K_SLEEPSTART, lane, now)
  end
end
