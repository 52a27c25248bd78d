-- Part of fair-core-N.lua, pasted where it says `--- @include "fair-dispatch"` (lua.ts readLua): BullMQ's promote replayed for a dispatched job, the sweeps of due timers, sleepers and leases, and the
-- dispatch itself (weighted virtual-time fair queueing across the active lanes).
-- Uses the locals the script defines before that line (rcall, now, the keys, and the parts included earlier).
-- BullMQ's promote (bullmq 6.x commands/promote-9.lua with its includes addJobInTargetList,
-- addJobWithPriority, getPriorityScore, isQueuePausedOrMaxed), done here so a dispatched job costs no
-- round trip of its own. test/fair-scheduler.test.ts ("exactly as BullMQ's own promote") compares it with BullMQ's script on
-- the installed version. Its ZREM from the delayed set is done by tryLane, before the charge: `id` is a job it took
-- out of it.
local pausedOrMaxed
local markerChecked = false
local function promoteParked(id)
  local jobKey = Q_JOB .. id
  local priority = tonumber(rcall('HGET', jobKey, 'priority')) or 0
  if pausedOrMaxed == nil then
    local attrs = rcall('HMGET', Q_META, 'paused', 'concurrency')
    pausedOrMaxed = attrs[1] ~= false or (attrs[2] ~= false and rcall('LLEN', Q_ACTIVE) >= tonumber(attrs[2]))
  end
  -- A delay marker left in the wait list by BullMQ 4 (deprecated in BullMQ 5) is dropped, as promote does.
  -- Once per call: after this call's first push the head is a job it promoted.
  if not markerChecked then
    markerChecked = true
    local marker = rcall('LINDEX', Q_WAIT, '0')
    if marker and string.sub(marker, 1, 2) == '0:' then rcall('LPOP', Q_WAIT) end
  end
  -- The wait list's LPUSH goes out with the call's others (flushDispatched).
  if priority == 0 then
    waitPushes[#waitPushes + 1] = id
  else
    rcall('ZADD', Q_PRIO, priority * 0x100000000 + rcall('INCR', Q_PC) % 0x100000000, id)
  end
  if not pausedOrMaxed then markerDue = true end
  rcall('XADD', Q_EVENTS, '*', 'event', 'waiting', 'jobId', id, 'prev', 'delayed')
  rcall('HSET', jobKey, 'delay', '0')
end

local function jobMeta(id)
  return rcall('HMGET', P_JOB .. id, 'o', 'm', 'p', 's', 'st')
end

-- A job on a timer (`m`: its jobMeta) that is due: off its timer and into its lane, behind the jobs that waited
-- meanwhile, as BullMQ puts a retry at the end of its wait list: the job that just failed (or was refused by an
-- open breaker) is not the next probe every time. Also an operator's promote (op promote).
local function timerDue(id, m)
  removeTimer(id, m[1])
  local seq = rcall('INCR', K_SEQ)
  rcall('HSET', P_JOB .. id, 's', seq)
  pushJob(id, m[1], m[2], tonumber(m[3]), seq)
end

-- The sweeps of the timers and the sleepers read their set's due members only when its first score (read unless this
-- call knows it: firstSeen) is due: most dispatches find none due, and that first score is the one their nextWake
-- needs (a ZRANGEBYSCORE finding none told it nothing). Not a function of its own: the script was at Lua's 200
-- locals (before longWay).
local function moveDueTimers()
  local first = firstSeen[K_TIMERS]
  if first == nil then first = firstScore(K_TIMERS) end
  if not first or first > now then return end
  for _, id in ipairs(rcall('ZRANGEBYSCORE', K_TIMERS, '-inf', nowArg(), 'LIMIT', '0', SWEEP_ARG)) do
    local m = jobMeta(id)
    if m[1] then
      timerDue(id, m)
    else
      rcall('ZREM', K_TIMERS, id)
      firstSeen[K_TIMERS] = nil
    end
  end
end

local function wakeSleepers()
  local first = firstSeen[K_SLEEP]
  if first == nil then first = firstScore(K_SLEEP) end
  if not first or first > now then return end
  for _, lane in ipairs(rcall('ZRANGEBYSCORE', K_SLEEP, '-inf', nowArg(), 'LIMIT', '0', SWEEP_ARG)) do
    unsleep(lane, true)
    local org = splitLane(lane)
    if rcall('EXISTS', P_LANE .. lane) == 1 then activate(lane, org, true) else dropLaneIfEmpty(lane, org) end
  end
end

-- Expired leases: finished or vanished -> free; in wait / active -> extend; still parked -> one lease more for the
-- attempt's repark, then free and back to the head of its lane. A retry or a deferral leaves its job parked with its
-- slot between BullMQ's park and the gate's repark (a round trip later: it frees the slot and sets the not-before
-- time), and a job that ran past its lease with no sweep since is found there expired. Sent again at once, the
-- job lost its backoff (and the repark, coming after the new dispatch, freed that dispatch's slot: op repark now
-- refuses it). So the first sweep to find the park extends the lease and marks the record (`pk`: the job's BullMQ
-- fetch count, `ats`, naming the attempt that parked it); a sweep finding the same mark a lease later takes that
-- worker for dead (a crash between the park and the repark, or a lease left by a version that promoted in a call
-- of its own).
local function sweepLeases()
  for _, id in ipairs(rcall('ZRANGEBYSCORE', K_LEASES, '-inf', nowArg(), 'LIMIT', '0', SWEEP_ARG)) do
    local m = jobMeta(id)
    local org = m[1]
    if not org then
      rcall('ZREM', K_LEASES, id)
    else
      local jk = Q_JOB .. id
      if rcall('EXISTS', jk) == 0 or rcall('HEXISTS', jk, 'finishedOn') == 1 then
        freeSlot(id, org)
        rcall('DEL', P_JOB .. id)
      else
        local score = tonumber(rcall('ZSCORE', Q_DELAYED, id))
        if score and score >= PARK_SCORE then
          local attempt = rcall('HGET', jk, 'ats') or '0'
          if rcall('HGET', P_JOB .. id, 'pk') ~= attempt then
            rcall('HSET', P_JOB .. id, 'pk', attempt)
            rcall('ZADD', K_LEASES, leaseDeadline(), id)
          else
            freeSlot(id, org)
            pushJob(id, org, m[2], tonumber(m[3]), tonumber(m[4]))
          end
        else
          rcall('ZADD', K_LEASES, leaseDeadline(), id)
        end
      end
    end
  end
end

-- The buffer's target (see bufferRoom in fair-buffer): here, with its one user, not created by the common claim.
local function bufferTarget()
  if BUFFER_ARG ~= 'w' then return tonumber(BUFFER_ARG) end
  sweepWorkers()
  return askSum()
end

-- bufferTarget() when nothing is queued, else nil: a claim refills only then, and under load the wait list
-- is seldom empty, so the first non-empty read ends it (one command, not two).
local function roomIfEmpty()
  if not nothingQueued() then return nil end
  return bufferTarget()
end

-- `knownDue` / `knownRoom`: what a caller (release, claim) already computed in this call, not read again.
-- Moving due timers and sleepers below changes lanes, not BullMQ's wait list, so a known room still holds.
local function dispatch(skipped, knownDue, knownRoom)
  local due, firsts = knownDue, nil
  if not due then due, firsts = dueNow() end
  if not due then return { {}, nextWake(firsts), now, 0, skipped or {} } end
  if due[1] then moveDueTimers() end
  if due[2] then wakeSleepers() end
  if due[3] then sweepLeases() end
  local out = {}
  local more = 0
  local limit = knownRoom or bufferRoom()
  if limit > MAX_BATCH then limit = MAX_BATCH end
  -- Each failed try parks a lane, so the loop is bounded; the cap only bounds one call's run time.
  local tries = 0
  -- A run: the lane of an org with no other lane goes on dispatching while its org's virtual time stays below the
  -- runner-up lane's score (read with the top one), so it would be chosen next anyway: the top is not read again
  -- (ZRANGE) meanwhile, and the vt (`v`, the next try's) is written once when the run ends, not per job (HSET + ZADD).
  local lane, org, model, v, bound, single
  local inRun = false
  -- A lane's head is read once per dispatch, and the jobs it took leave the lane in one ZREM (flushHeads).
  local heads = newHeads()
  while #out < limit do
    if not inRun then
      -- The race as dueNow read it in this call, when nothing wrote to it since (firstSeen): the first pick only.
      local top = firstSeen[K_LANES]
      firstSeen[K_LANES] = nil
      if not top then top = rcall('ZRANGE', K_LANES, '0', '1', 'WITHSCORES') end
      if #top == 0 then break end
      org = splitLane(top[1])
      -- An org of several lanes: its best lane is chosen by their heads as stored, so the jobs taken leave first.
      if #orgLanes(org) > 1 then flushAllHeads(heads) end
      lane = bestLaneOf(org, top[1])
      model = select(2, splitLane(lane))
      v, bound, single = tonumber(top[2]), tonumber(top[4]), #orgLanes(org) < 2
    end
    tries = tries + 1
    if tries > limit + SWEEP_MAX then
      more = 1
      break
    end
    local id, nv, stays, parked, stop = tryLane(lane, org, model, v, single, heads, limit - #out)
    -- Enough removed jobs dropped for one call: a run's vt is written below, as when the tries run out.
    if stop then
      more = 1
      break
    end
    if single then
      if id and stays and (bound == nil or nv < bound) then
        v, inRun = nv, true
      else
        -- The run is over: the runner-up comes next (the lane keeps its place in the race), or this try parked the
        -- lane (asleep, capped, emptied: out of the race), after a job or, failing, with the run's vt unchanged.
        if id then setVt(org, nv, stays and { lane } or {}) elseif inRun then setVt(org, v, {}) end
        inRun = false
      end
    end
    -- A leased job that exists but was not parked (promoted by hand) is BullMQ's already: its lease lets it run.
    if id and parked then
      promoteParked(id)
      out[#out + 1] = id
    end
  end
  flushAllHeads(heads)
  if inRun then setVt(org, v, { lane }) end
  if #out >= MAX_BATCH then more = 1 end
  flushDispatched()
  if gvtDirty then rcall('SET', K_GVT, fmt(gvtValue)) end
  local wants = {}
  for _, m in ipairs(leaseWantList) do
    local w = leaseWants[m]
    wants[#wants + 1] = w[1]
    wants[#wants + 1] = fmt(w[2])
    wants[#wants + 1] = fmt(w[3])
  end
  flushBuckets()
  -- The lanes wakeSleepers woke and this call did not put back to sleep leave the sleepers (sleepsWoken), before
  -- nextWake reads them.
  local left = {}
  for _, l in ipairs(sleepsWoken) do
    if sleepsWoken[l] then left[#left + 1] = l end
  end
  if #left > 0 then
    rcall('ZREM', K_SLEEP, unpack(left))
    rcall('HDEL', K_SLEEPWHY, unpack(left))
    rcall('HDEL', K_SLEEPSTART, unpack(left))
    firstSeen[K_SLEEP] = nil
  end
  sleepsWoken = {}
  return { out, nextWake(), now, more, skipped or {}, wants }
end
