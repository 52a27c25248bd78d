-- Part of fair-core-N.lua, pasted where it says `--- @include "fair-claim"` (lua.ts readLua): what is due now (timers, sleepers, leases) and the next wake time, and a claim's own part and reply: the
-- functions the common claim needs before it answers.
-- Uses the locals the script defines before that line (rcall, now, the keys, and the parts included earlier).
-- The first scores of the timers and the sleepers (false: empty) read in this call and not written since, by key:
-- a dispatch's sweeps read them to know whether anything is due, and its nextWake then takes them from here instead
-- of reading both sets again (2 of a dispatch's ~45 commands). Every write to either set forgets its entry. Under
-- K_LANES: the race's top two lanes with their scores (ZRANGE 0 1 WITHSCORES), read by dueNow to tell whether a lane
-- is active, taken by the dispatch that follows as its first pick (the ZCARD before it was one read more); every
-- write to the race forgets it too.
local firstSeen = {}
local function firstScore(key)
  local r = rcall('ZRANGE', key, '0', '0', 'WITHSCORES')
  local s = #r > 0 and tonumber(r[2]) or nil
  if key ~= K_LEASES then firstSeen[key] = s or false end
  return s
end

-- The earliest timer or sleeping lane, for the caller's one timer: returned to one caller per wake time
-- (the others would only find the work taken; a lost owner is covered by the callers' slow safety poll).
-- `firsts`: the timers' and sleepers' first scores when the caller has just read them (nothing changed since).
-- Only a caller that arms a timer takes it (TAKES_WAKE: a dispatch loop's dispatch, a worker's claim or release,
-- a lease made where a loop takes its result). Any other (an enqueue, the API's dispatch after a plan change,
-- the batch collector's, a lease in an API process) is told the wake-up without taking it: it asks the workers
-- for a dispatch (the fair kick channel), and the first to call takes it. Taken by such a caller, it was lost
-- until a worker's safety poll, up to 10 s after it was due.
-- `unarmed`: the caller read the wake key in this call and found none (no GET again).
local function nextWake(firsts, unarmed)
  local wake = nil
  for i, key in ipairs({ K_TIMERS, K_SLEEP }) do
    local s
    if firsts then s = firsts[i] elseif firstSeen[key] ~= nil then s = firstSeen[key] or nil else s = firstScore(key) end
    if s and (wake == nil or s < wake) then wake = s end
  end
  if not wake then return '0' end
  if not unarmed and tonumber(rcall('GET', K_WAKE)) == wake then return '0' end
  if not TAKES_WAKE then return fmt(wake) end
  rcall('SET', K_WAKE, fmt(wake), 'PX', math.max(1, math.ceil(wake - now)))
  return fmt(wake)
end

-- What is due now: {timers, sleepers, leases}, or nil when nothing is and no lane is active (the common
-- call of a throttled or idle deployment, kept cheap). With active lanes every sweep runs.
-- When nothing is due, the second result holds the first scores read (timers, sleepers), for nextWake.
-- `only`: 'idle' when the caller read the active lanes' count in this call and found none (no ZCARD again); 'lanes'
-- for a release whose process swept the timers, sleepers and leases lately (ARGV[5] '2', dispatch-loop.ts
-- `sweepDue`): only an active lane makes a dispatch due, they are not read. The jobs of one wake-up finish in a few
-- releases per worker, milliseconds apart, and each read them again (3 of a lone release's ~11 commands); a lost
-- wake-up is still caught within a safety poll, the process's next sweep being at most that far.
local function dueNow(only)
  if only ~= 'idle' then
    -- Read already in this call when nothing wrote the race since (a release's slots found it empty: releaseSlots).
    local top = firstSeen[K_LANES]
    if top == nil then
      top = rcall('ZRANGE', K_LANES, '0', '1', 'WITHSCORES')
      firstSeen[K_LANES] = top
    end
    if #top > 0 then return { true, true, true } end
  end
  if only == 'lanes' then return nil end
  local due, firsts, any = {}, {}, false
  for i, key in ipairs({ K_TIMERS, K_SLEEP, K_LEASES }) do
    firsts[i] = firstScore(key)
    due[i] = firsts[i] ~= nil and firsts[i] <= now
    any = any or due[i]
  end
  if any then return due end
  return nil, firsts
end

-- Whether the claim in this call found its dispatch's charge taken by an earlier claim (claimOwn; claimReply says so).
local chargeTaken = false

-- A claim's own part: the API's cancel marker, and the job's slot (its lease renewed, its stage written).
-- Returns held (0|1), cancelled (0|1).
local function claimOwn(id)
  -- The API's cancel marker, read with the claim (a cancel sent before this worker tracked the job): one round
  -- trip, and atomic with it. The claim still holds the slot: the job's failure releases it like any other.
  -- The marker holds the timestamp of the job it cancels: one a cancel left as an earlier job of this id
  -- finished (the job then removed, and its idempotency key sent again) is not this job's, and goes. '1': any job
  -- of the id (a marker written before markers carried it, or a pipeline run's cancel for a step not made yet).
  local cancelled = 0
  local mark = rcall('GET', P_CANCEL .. id)
  if mark then
    if mark == '1' or mark == rcall('HGET', Q_JOB .. id, 'timestamp') then cancelled = 1 else rcall('DEL', P_CANCEL .. id) end
  end
  -- The lease renewed in the command that tells whether there is one (XX: never created; GT: never shortened).
  -- 0 also when the new expiry equals the old one (dispatched in this millisecond): then ZSCORE tells.
  local held = rcall('ZADD', K_LEASES, 'XX', 'GT', 'CH', leaseDeadline(), id)
  if held == 0 and rcall('ZSCORE', K_LEASES, id) then held = 1 end
  if held == 1 then
    -- The claim stamp (`c`: '1' once a claim of this dispatch came, '0' from each dispatch): from here on this
    -- dispatch's charge is the attempt's to settle (its worker gives back what it did not spend, or corrects it by
    -- the call's usage). A cancel or a clean that later finds the job unlocked in BullMQ's wait list (its lock
    -- lapsed, the stalled check moved it back) then frees the slot but refunds nothing: as a job never fetched it
    -- was refunded again by the attempt (before its call) or for a call it made. Incremented, not set: a second
    -- claim of the same dispatch (the job fetched again after that stall while its first attempt still runs) finds
    -- the charge taken, and its attempt is told so (claimReply): its calls are charged as any call no dispatch paid
    -- for. Both attempts took the one charge as theirs until 2026-12-07: given back twice when neither called the
    -- model, and one call left uncharged when both did. The one command this adds to a claim that holds a slot
    -- (a second claim of a dispatch, rare, adds one more, below).
    chargeTaken = rcall('HINCRBY', P_JOB .. id, 'c', '1') > 1
    -- Put back to '1' (only then: a second claim, after a stall): processes from before 2026-12-07 read only '1' as
    -- claimed (refundDispatch), and during a rolling deploy an older API's cancel of the job would give the charge
    -- back for a '2' as well, once more than the attempt that settles it.
    if chargeTaken then rcall('HSET', P_JOB .. id, 'c', '1') end
    -- Only on an existing hash: a write to a removed job would leave a hash BullMQ cannot read as a job. A
    -- cancelled job never calls the model: its stage is not "calling_model".
    local progress = ARGV[6]
    if cancelled == 0 and progress and progress ~= '' and rcall('EXISTS', Q_JOB .. id) == 1 then rcall('HSET', Q_JOB .. id, 'progress', progress) end
  end
  return held, cancelled
end

-- True when nothing is queued in BullMQ's wait list or prioritized set (see bufferRoom).
local function nothingQueued()
  return rcall('LLEN', Q_WAIT) == 0 and rcall('ZCARD', Q_PRIO) == 0
end

-- A claim's reply: held, cancelled, what it dispatched; and when the job runs, its result-cache lookup (and
-- single-flight lock on a miss) rides here instead of costing a round trip before the model call, or, for an
-- attempt already answered from memory, its usage row is appended here instead of in a round trip of its own.
-- A job that does not run takes no lock and records nothing. Held is answered 2 when an earlier claim of the
-- dispatch took its charge (chargeTaken): the slot is held, the attempt's calls are not prepaid.
local function claimReply(held, cancelled, d)
  local h = (held == 1 and chargeTaken) and 2 or held
  if held == 1 and cancelled == 0 then
    if #KEYS >= 9 then
      return { h, cancelled, d, resultCacheLookup(KEYS, 5, ARGV[9], ARGV[10], ARGV[11], ARGV[12]) }
    elseif #KEYS == 5 then
      rcall('XADD', KEYS[5], '*', ARGV[9], ARGV[10])
      return { h, cancelled, d, 1 }
    end
  end
  return { h, cancelled, d }
end
