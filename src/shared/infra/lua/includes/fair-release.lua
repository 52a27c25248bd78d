-- Part of fair-core-N.lua, pasted where it says `--- @include "fair-release"` (lua.ts readLua): a release's slots and the lanes they wake (a refund's among them: the charge corrections themselves are in fair-corrections), what a dispatched job that never ran gives back, and a cancel's taking of a job.
-- Uses the locals the script defines before that line (rcall, now, the keys, and the parts included earlier).
-- Frees the slots of the finished jobs ARGV[from..]; how many it freed.
local function releaseFrom(from)
  return wakeReleased(releaseSlots(from))
end

-- Lanes of `org` asleep on a bucket in `refunded` (key -> true: buckets just given tokens back) get a fresh
-- look at this call's dispatch: a refund (a cache hit, a job cancelled before its call) is capacity now, not
-- at the wake time computed before it. A lane that still lacks room goes back to sleep with a new wake time.
-- Other orgs' lanes asleep on a refunded model bucket keep their wake time.
local function wakeRefunded(org, refunded)
  local lanes = orgLanes(org)
  if #lanes == 0 then return end
  local whys = rcall('HMGET', K_SLEEPWHY, unpack(lanes))
  for k, why in ipairs(whys) do
    if why and refunded[why] then
      local l = lanes[k]
      if unsleep(l) then activate(l, org, true) end
    end
  end
end

-- True when the dispatched job `id` still waits in BullMQ's wait list or prioritized set, unlocked: no worker holds
-- it (BullMQ's fetch moves it to active and takes its lock in one script), so none will end it or release its slot.
-- Also a job fetched before whose lock lapsed (its worker died or its event loop stalled) and which BullMQ's stalled
-- check moved back: its charge is then its claim's, if one came (refundDispatch). LPOS walks the wait list, which
-- the dispatcher keeps short (fair-buffer).
local function unfetched(id)
  if rcall('EXISTS', Q_JOB .. id .. ':lock') == 1 then return false end
  return rcall('ZSCORE', Q_PRIO, id) ~= false or rcall('LPOS', Q_WAIT, id) ~= false
end

-- Gives back what the dispatch of `id` (a job of `org` for `model` that never ran) charged: its request and its
-- token estimate, to the org's and the model's buckets (a batch lane was charged nothing). Nothing when a worker's
-- claim took the charge (the claim stamp `c`, claimOwn): a job back in BullMQ's wait list after the stalled check
-- (its lock lapsed) may have called the model, and an attempt that did not gives the charge back itself, so a
-- refund here was one too many either way. Reads the job's record: call it before the record goes.
local function refundDispatch(id, org, model)
  if string.sub(model, -#BATCH_LANE) == BATCH_LANE then return end
  local r = rcall('HMGET', P_JOB .. id, 'e', 'c')
  -- Any count: the claim keeps the stamp at '1' now, but for a while (2026-12-07) it counted, leaving '2' on a job
  -- claimed twice.
  if (tonumber(r[2]) or 0) > 0 then return end
  local est = tonumber(r[1]) or 0
  local refunded = correctCharge(org, model, -est, -est, -1)
  if refunded then wakeRefunded(org, refunded) end
end

-- Takes the job `id` out of its lane or timer, or gives back the slot, and what its dispatch charged, of one
-- dispatched but not fetched (it sits in BullMQ's wait list or prioritized set, unlocked), and forgets it (op
-- cancel). A job a worker has fetched (BullMQ takes its lock with the fetch) is the worker's to end, whether its
-- claim came yet or not: the claim reads the cancel marker, or the running attempt gets the cancel message, and the
-- slot and any unspent charge go back when it ends. Freed here as well, a running job's slot would go to another job
-- of its org (over its cap) and the charge be given back twice. So would a job that has already ended: its lock is
-- gone, but its slot waits for its worker's release (batched), which brings the attempt's own refund or usage
-- correction: the lock alone (this script's test until 2026-12-06) took a job cancelled as it finished for one
-- never fetched. Whatever gave the slot back first (a release, another cancel) dropped the lease: this one then
-- finds none and gives nothing back, so a job's slot and charge go back once. The head of a lane asleep on a
-- bucket set its wake time (the tokens its estimate needs, the backlog a batched wake waits for): taken out, the
-- lane gets a fresh look at this call's dispatch, and sleeps again, with a wake time for its new head, if it still
-- lacks room. A stalled job (unlocked, back in the wait list) gives its slot back here too (an attempt of it that
-- still runs finds no lease at its release), and its charge only when no claim took it (refundDispatch): an attempt
-- that claimed it settles it, once. Returns whether it took the job, whether that gave back a slot (the job then leaves BullMQ's wait list
-- or prioritized set with its caller's removal), and whether it woke a lane.
local function cancelJob(id)
  local m = jobMeta(id)
  local org, st = m[1], m[5]
  if not org then return false, false, false end
  local done, freed, woke = false, false, false
  if st == 'lane' then
    local lane = laneOf(org, m[2])
    local asleepHead = rcall('ZSCORE', K_SLEEP, lane) and rcall('ZRANGE', P_LANE .. lane, 0, 0)[1] == id
    done = removeFromLane(id, org, m[2])
    -- An emptied lane was forgotten (unsleep then finds nothing).
    if done and asleepHead and unsleep(lane) then
      activate(lane, org, true)
      woke = true
    end
  elseif st == 'timer' then
    done = removeTimer(id, org)
  elseif st == 'lease' and unfetched(id) then
    freed = freeSlot(id, org)
    done = freed
    if freed then refundDispatch(id, org, m[2]) end
  end
  if done then rcall('DEL', P_JOB .. id) end
  return done, freed, woke or freed
end
