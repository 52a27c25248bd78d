-- Part of fair-core-N.lua, pasted where it says `--- @include "fair-buffer"` (lua.ts readLua): BullMQ's wait list sized by the live workers' asks (the registry, the room a refill fills), and the release
-- of finished jobs' slots.
-- Uses the locals the script defines before that line (rcall, now, the keys, and the parts included earlier).
-- The wait list is sized by the workers alive now (each registers while it dispatches): with none, nothing
-- is promoted, so jobs keep waiting fairly instead of piling up in BullMQ's FIFO for the first worker back.
-- Forgets the workers whose registration lapsed; true when there were any.
local function sweepWorkers()
  local gone = rcall('ZRANGEBYSCORE', K_WORKERS, '-inf', nowArg())
  if #gone == 0 then return false end
  rcall('ZREMRANGEBYSCORE', K_WORKERS, '-inf', nowArg())
  rcall('HDEL', K_WORKERCONC, unpack(gone))
  return true
end

-- The sum of the registered workers' asks (lapsed ones included until swept). Each parsed by the addition itself,
-- not tonumber (which parses a string twice in Lua 5.1): a claim carrying a release reads it every job.
local function askSum()
  local total = 0
  for _, a in ipairs(rcall('HVALS', K_WORKERCONC)) do total = total + a end
  return math.ceil(total)
end

-- Keep BullMQ's wait short: fairness is decided as late as possible. How many jobs the wait list lacks.
-- Only what a worker can still fetch counts: a job fetched and not yet started (claimed) already has a
-- worker's slot, and is committed whatever is dispatched after it. Counting it too (this script did) shrank
-- the buffer exactly when the workers were busy, when fetch and claim lie furthest apart: measured on a
-- backlog at concurrency 50, the worker then ran ~27 jobs at a time, with the wait list empty a fifth of the time.
-- Refilled once it lacks REFILL_MIN jobs, or all but one of a target of SMALL_TARGET or less (0 until then): jobs finishing one at a
-- time would each pay a dispatch for the one job replacing them (at concurrency 1 every claim did: ~20 of a job's ~80
-- Redis commands). A dispatch's fixed part (sweeps, lane choice, bucket writes, ~32 commands and the script's
-- function setup) is then shared by a batch (8 jobs or more above SMALL_TARGET; up to it, all but one: below): at 4
-- (until 2026-12-05) a cache hit at concurrency 1 cost 3.8 more commands and ~10 % more Redis time; each job dispatched costs ~6 commands of its own. A list refilled only at
-- half of a large target ran nearly dry under load (concurrency 50 of cache hits: 45 of 50 slots busy, not 50).
-- A smaller target (a worker's ask by time at a slower rate: a cache miss at concurrency 1 asks for 6 to 10 jobs)
-- was refilled at half of it until 2026-12-07: 3 to 5 jobs a dispatch, a dispatch in a third of that worker's
-- claims. It waits for all but one now: the one left feeds a fetch made before the refilling call (another slot's,
-- another worker's), and at concurrency 1 the claim that takes the next-to-last job refills the list in its own
-- call, long before the running job ends. Fairness gains as well: the list holds (target + 1) / 2 jobs on average,
-- not three quarters of the target, each a job holding its org's slot while it waits in BullMQ's FIFO.
-- A job dispatched meanwhile waits no longer: it joins the list's tail either way, behind the same jobs.
-- All but one up to SMALL_TARGET jobs (a worker of concurrency under 16 asks for 16 at most, fair/buffer-ask.ts
-- SMALL_WORKER_MAX_ASK), REFILL_MIN above: until 2026-12-08 a target of 10 to 16 was refilled once it lacked 8, so
-- the ask of 16 of a worker of concurrency 1 running short jobs (cache hits and misses alike) was refilled 8 jobs at
-- a time, each job carrying an eighth of a dispatch's fixed part (~500k Redis instructions, callgrind: sweeps, lane
-- choice, bucket writes, the long way's functions). Refilled at 15 it carries a fifteenth (case 2b, medians of 3
-- alternated rounds: hit 859.7k -> 802.2k, miss 1,061.8k -> 1,018.7k Redis instructions a job), and the list holds
-- ~8.5 jobs on average instead of ~12 (its most, 16, unchanged).
-- Lapsed workers are swept only once the list lacks a batch counting their asks: most calls (a claim that finds
-- the list full enough) skip that read. Their asks only add to the room and raise the batch at most as much,
-- so a list that lacks a batch without them lacks one with them too, and the room is taken again after the sweep.
local REFILL_MIN, SMALL_TARGET = 8, 16
-- The room when `queued` jobs leave a batch's worth of `target` lacking, else 0. The batch grows with the target
-- by at most as much (then drops to REFILL_MIN), as the lapsed workers' sweep above needs.
local function roomFor(target, queued)
  local room = target - queued
  if room < (target <= SMALL_TARGET and math.max(1, target - 1) or REFILL_MIN) then return 0 end
  return room
end
-- `leaving`: jobs still in the list that its caller is taking out (a cancel's, removed next by the API or the board):
-- counted, they kept the next job out of a buffer they filled, and no call came again once they were gone.
-- BullMQ's prioritized set is read only when the wait list alone leaves a batch lacking: its jobs can only shrink the
-- room, and under load (a claim carrying releases, the list full enough) the list's length settles it (one command
-- of a non-dispatching release claim's ~16; the list holds nearly every queued job unless priorities are used).
local function bufferRoom(leaving)
  local fixed = BUFFER_ARG ~= 'w'
  local queued = rcall('LLEN', Q_WAIT) - (leaving or 0)
  local target = fixed and tonumber(BUFFER_ARG) or askSum()
  if roomFor(target, queued) == 0 then return 0 end
  queued = queued + rcall('ZCARD', Q_PRIO)
  local room = roomFor(target, queued)
  if room == 0 or fixed or not sweepWorkers() then return room end
  return roomFor(askSum(), queued)
end

-- Takes `n` off `org`'s count in the HASH `counts`; the field goes at 0.
local function uncount(counts, org, n)
  if rcall('HINCRBY', counts, org, n == 1 and '-1' or -n) <= 0 then rcall('HDEL', counts, org) end
end

-- Frees the slots of the finished jobs ARGV[from..] and forgets them (a laned or timed job keeps its record): what
-- every release does, a claim's or a release op's, early (no charge corrections handed over) or on the long way.
-- Returns how many slots it freed and the orgs given one back, in order, with whether each has lanes waiting for a
-- slot (capblk; `anyCapped`): waking those is wakeReleased's, on the long way. Each lease is dropped on its own
-- (its ZREM says whether the job held one, so an id released twice counts once); the in-flight counts go down
-- once per org and the records go in one DEL: under load a claim carries dozens of releases, and from Lua each
-- command costs about as much as its work.
local function releaseSlots(from)
  local r = { freed = 0, orgs = {}, capped = {}, anyCapped = false }
  local freedOf, forget = {}, {}
  for i = from, #ARGV do
    local id = ARGV[i]
    local m = rcall('HMGET', P_JOB .. id, 'o', 'st')
    local org = m[1]
    if org then
      if rcall('ZREM', K_LEASES, id) == 1 then
        r.freed = r.freed + 1
        if r.capped[org] == nil then
          if firstSeen[K_LANES] == nil then
            -- The first org's read also tells whether the race holds a lane (EXISTS counts a key named twice twice; a
            -- sorted set exists only while it holds a member): an empty race is known read (dueNow, the dispatch's
            -- first pick) at no command of its own. A throttled org's release read it in a ZRANGE of its own, one of
            -- its 6-8 commands, until 2026-12-07.
            local n = rcall('EXISTS', P_CAPBLK .. org, K_LANES, K_LANES)
            r.capped[org] = n % 2 == 1
            if n < 2 then firstSeen[K_LANES] = {} end
          else
            r.capped[org] = rcall('EXISTS', P_CAPBLK .. org) == 1
          end
          r.anyCapped = r.anyCapped or r.capped[org]
          r.orgs[#r.orgs + 1] = org
          freedOf[org] = 0
        end
        freedOf[org] = freedOf[org] + 1
      end
      if m[2] ~= 'lane' and m[2] ~= 'timer' then forget[#forget + 1] = P_JOB .. id end
    end
  end
  for _, org in ipairs(r.orgs) do uncount(K_INFLIGHT, org, freedOf[org]) end
  -- In slices: Lua's unpack takes a few thousand values at most.
  for k = 1, #forget, 1000 do rcall('DEL', unpack(forget, k, math.min(k + 999, #forget))) end
  return r
end
