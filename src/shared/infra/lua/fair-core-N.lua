-- Weighted fair dispatcher: every state change in one script, because Redis Lua has no includes and the
-- lane invariants (activate / sleep / cap-block / free slot) must be applied identically by every op.
-- KEYS (fair-keys.ts `script`, the same four for every fair script): 1 the dispatcher's prefix ('<keyPrefix>:'),
--   2 the token buckets' ('<bucketPrefix>:tb:'), 3 BullMQ's queue key prefix ('<prefix>:<queue>:'), 4 agentq's own
--   ('<prefix>:agentq:', the API's cancel markers and the orgs' job indexes). Every key is built from them here, by
--   the names fair-keys.ts gives them (op `keys` returns them for its test): passing the ~40 keys themselves cost
--   Redis ~1,000 instructions each per call (callgrind: a 65-argument call 86.6k, the same with 4 keys 48.2k), more
--   than building the ones a call uses (~450 each). All share one hash tag (fair-keys.ts checks), so on Redis
--   Cluster they are in the slot of the keys declared. What the keys are:
--   lanes ZSET, sleep ZSET, sleepwhy HASH, timers ZSET, otimers HASH, leases ZSET, inflight HASH, vt HASH,
--   gvt STRING, seq STRING, mblock HASH, mblockwhy HASH, mlimits HASH, job: / lane: / olanes: / capblk: / plan:
--   prefixes, the buckets' rpm:org: / tpm:org: / rpm:model: / tpm:model: prefixes, BullMQ's wait, prioritized,
--   delayed and job key prefix (read; claim writes the job's progress field),
--   workers ZSET (live dispatching workers -> registration expiry ms), workerconc HASH (worker -> its ask: jobs of
--   BullMQ's wait list it wants kept, fair/buffer-ask.ts; the key's name is its older content, its concurrency:
--   during an upgrade an older worker's registration reads as an ask of its whole concurrency),
--   throttled HASH (org -> seconds its lanes slept on a limit), sleepstart HASH (lane -> sleep start ms),
--   wake STRING (the next wake time one caller has armed a timer for), the cancel marker prefix (claim reads
--   <prefix><jobId>), the org job index prefix (enqueue adds to the ZSET <prefix><org>), BullMQ's meta,
--   active, priority counter, events stream and marker (a dispatch promotes the jobs it hands out, as BullMQ's
--   promote does), leasereq HASH (model -> ms until which the shard's lease request for the model stands: in
--   flight, or refused until then), leasewait: prefix (SET <prefix><model>: lanes asleep for the model's lease)
--   5-8 (claim only, optional) the admitted job's result-cache keys: org version, org+agent version, entry,
--   single-flight lock (includes/result-cache-lookup.lua); or 5 alone: the usage stream, for an attempt
--   answered before its claim (an L1 hit from memory), whose usage row the claim appends
-- ARGV[1] op: enqueue | dispatch | release | repark | cancel | plan | wake | block | claim | orphans | keys
-- ARGV[2..6] default plan: weight, concurrency, rpm pro, rpm flash, tpm (<= 0 = unlimited)
-- ARGV[7] lease ms, ARGV[8] lowest delayed score of a parked job, ARGV[9] buffer target: a number of jobs,
--   or 'w' for the sum of the live workers' asks,
-- ARGV[10] max jobs per dispatch, ARGV[11] max timers / sleepers / leases handled per dispatch
-- ARGV[12] leased (0|1): the model buckets (KEYS 21, 22) are this queue shard's reservoirs of the model's
--   global buckets (QUEUE_SHARDS > 1, fair/model-leases.ts): they do not refill; a lane they cannot serve
--   sleeps, and the dispatch asks its caller (`wants`) to lease more from the global bucket (op lease)
-- ARGV[13..] op arguments:
--   dispatch: worker id ('' = not a worker), its ask, registration ttl ms (registers the worker)
--   enqueue: dispatch (0|1), then per job: id, org, model, priority, est tokens, model rpm, model tpm, not-before ms
--     (0 = now), per-org rpm of the model ('' = the org's plan / default for the model's tier), org job index
--     score ('' = do not index; else ZADD NX into the org's index, known job or not)
--   claim: id, progress JSON ('' = none), refill (0|1), the result-cache lookup's L1 tag, lock token, lock ttl
--     ms and owner (read only with KEYS 5-8; with KEY 5 alone: the usage row's field name and the row,
--     then two unused), charge corrections (a count, then org, model, org tokens,
--     model tokens, requests per entry: see applyCorrections), then ids of finished jobs whose slots this claim releases
--     first: {held, cancelled, dispatch result or 0[, lookup result]}: held 1 if the job holds a slot (its
--     lease is renewed, and unless cancelled the job hash's `progress` field set to the JSON: the attempt's
--     stage, at no extra command); cancelled 1 if the job's cancel marker is set; a claim that released slots
--     dispatches when due and the wait list lacks a batch (bufferRoom), else with refill a held claim dispatches when
--     BullMQ's wait list is empty; with KEYS 5-8 a held, not cancelled claim also does the job's
--     result-cache lookup (its reply as result-cache-lookup-4.lua's); with KEY 5 alone it appends the
--     attempt's usage row (XADD) instead, only then: a job that does not run records nothing;  orphans: offset, count
--   release: dispatch (0|1: dispatch in this call when due), charge corrections (as claim's), then job ids;
--   repark: id, notBeforeMs, reason;  cancel: id
--   plan: org, weight, concurrency, rpmPro, rpmFlash, tpm ('' = use the default)
--   wake: org;  block: model, untilMs, reason
--   lease: model, requests granted, tokens granted, retry at ms (0 when something was granted)
-- Returns: dispatch / enqueue / lease {promoted ids, next wake ms (0 = none), now ms, more (0|1), skipped ids,
--          wants: per model whose reservoir a lane lacks, model, requests short, tokens short (leased only)};
--          release: {slots freed, 1 if a dispatch now has anything to do (an active lane, a due timer,
--          sleeper or lease) else 0[, dispatch result when asked and due]}; repark / cancel: 1 if done, 0 if the job is unknown / not waiting; plan / wake / block: 1
--- @include "result-cache-lookup"
--- @include "token-bucket-adjust"
local rcall = redis.call
local t = rcall('TIME')
local nowF = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local now = math.floor(nowF)

local FP, TB, QK, AP = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
-- The keys the common claim and release use; the others are built after those calls have answered.
local K_LANES, K_SLEEP, K_TIMERS, K_LEASES, K_INFLIGHT = FP .. 'lanes', FP .. 'sleep', FP .. 'timers', FP .. 'leases', FP .. 'inflight'
local K_WORKERS, K_WORKERCONC, K_WAKE = FP .. 'workers', FP .. 'workerconc', FP .. 'wake'
local P_JOB, P_CAPBLK, P_CANCEL = FP .. 'job:', FP .. 'capblk:', AP .. 'cancel:'
local Q_WAIT, Q_PRIO, Q_JOB = QK .. 'wait', QK .. 'prioritized', QK
-- Suffix of a model's batch lane (fair-plan.ts BATCH_LANE_SUFFIX).
local BATCH_LANE = '@batch'

local op = ARGV[1]
local DEF = { weight = tonumber(ARGV[2]), conc = tonumber(ARGV[3]), rpmPro = tonumber(ARGV[4]),
  rpmFlash = tonumber(ARGV[5]), tpm = tonumber(ARGV[6]) }
local LEASE_MS = tonumber(ARGV[7])
local PARK_SCORE = tonumber(ARGV[8])
local BUFFER_ARG = ARGV[9]
local MAX_BATCH = tonumber(ARGV[10])
local SWEEP_MAX = tonumber(ARGV[11])
local LEASED = ARGV[12] == '1'
-- A lane waits this long for a lease asked for (the caller's take from the global bucket and its lease op);
-- when no lease comes (the caller died), the lane wakes and asks again.
local LEASE_WAIT_MS = 2000
-- Leased tokens unused this long lapse (a shard whose demand moved elsewhere strands at most one chunk, for a while).
local RESERVOIR_TTL_MS = 60000

-- Full precision: redis.call formats plain numbers with 14 digits, which would corrupt scores and vt.
local function fmt(x) return string.format('%.17g', x) end

-- The lease deadline of a job claimed or dispatched in this call: formatted once per call, not per job (a
-- `%.17g` format is ~5,000 Redis instructions, a tenth of a dispatched job's commands).
local leaseUntil
local function leaseDeadline()
  leaseUntil = leaseUntil or fmt(now + LEASE_MS)
  return leaseUntil
end

local function firstScore(key)
  local r = rcall('ZRANGE', key, 0, 0, 'WITHSCORES')
  if #r == 0 then return nil end
  return tonumber(r[2])
end

-- The earliest timer or sleeping lane, for the caller's one timer: returned to one caller per wake time
-- (the others would only find the work taken; a lost owner is covered by the callers' slow safety poll).
-- `firsts`: the timers' and sleepers' first scores when the caller has just read them (nothing changed since).
local function nextWake(firsts)
  local wake = nil
  for i, key in ipairs({ K_TIMERS, K_SLEEP }) do
    local s
    if firsts then s = firsts[i] else s = firstScore(key) end
    if s and (wake == nil or s < wake) then wake = s end
  end
  if not wake then return '0' end
  if tonumber(rcall('GET', K_WAKE)) == wake then return '0' end
  rcall('SET', K_WAKE, fmt(wake), 'PX', math.max(1, math.ceil(wake - now)))
  return fmt(wake)
end

-- What is due now: {timers, sleepers, leases}, or nil when nothing is and no lane is active (the common
-- call of a throttled or idle deployment, kept cheap). With active lanes every sweep runs.
-- When nothing is due, the second result holds the first scores read (timers, sleepers), for nextWake.
local function dueNow()
  if rcall('ZCARD', K_LANES) > 0 then return { true, true, true } end
  local due, firsts, any = {}, {}, false
  for i, key in ipairs({ K_TIMERS, K_SLEEP, K_LEASES }) do
    firsts[i] = firstScore(key)
    due[i] = firsts[i] ~= nil and firsts[i] <= now
    any = any or due[i]
  end
  if any then return due end
  return nil, firsts
end

-- A claim's own part: the API's cancel marker, and the job's slot (its lease renewed, its stage written).
-- Returns held (0|1), cancelled (0|1).
local function claimOwn(id)
  -- The API's cancel marker, read with the claim (a cancel sent before this worker tracked the job): one round
  -- trip, and atomic with it. The claim still holds the slot: the job's failure releases it like any other.
  local cancelled = rcall('EXISTS', P_CANCEL .. id)
  -- The lease renewed in the command that tells whether there is one (XX: never created; GT: never shortened).
  -- 0 also when the new expiry equals the old one (dispatched in this millisecond): then ZSCORE tells.
  local held = rcall('ZADD', K_LEASES, 'XX', 'GT', 'CH', leaseDeadline(), id)
  if held == 0 and rcall('ZSCORE', K_LEASES, id) then held = 1 end
  if held == 1 then
    -- Only on an existing hash: a write to a removed job would leave a hash BullMQ cannot read as a job. A
    -- cancelled job never calls the model: its stage is not "calling_model".
    local progress = ARGV[14]
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
-- A job that does not run takes no lock and records nothing.
local function claimReply(held, cancelled, d)
  if held == 1 and cancelled == 0 then
    if #KEYS >= 8 then
      return { held, cancelled, d, resultCacheLookup(KEYS[5], KEYS[6], KEYS[7], KEYS[8], ARGV[16], ARGV[17], ARGV[18], ARGV[19]) }
    elseif #KEYS == 5 then
      rcall('XADD', KEYS[5], '*', ARGV[16], ARGV[17])
      return { held, cancelled, d, 1 }
    end
  end
  return { held, cancelled, d }
end

-- The common claim and release answer here, before the ~60 functions below are created: their creation alone
-- cost ~15 us of Redis time per call (measured with EVALSHA: a claim of a job without a slot 23-27 us, the same
-- script cut off before those functions 6.6 us), more than such a call's own commands. Common: no charge
-- corrections handed over (ARGV[20] = 0 for a claim, ARGV[14] = 0 for a release), releases done early (see
-- releaseSlots), no org's capped lanes to wake, and then nothing to dispatch: no refill due (the job does not run,
-- refill not asked, or BullMQ's wait list still holds jobs), the wait list lacking less than a batch, or nothing due
-- (no active lane, no due timer, sleeper or lease: a queue that is not backed up, whose jobs were dispatched when
-- enqueued), answered as dispatch answers it. Anything else goes on below with the work done so far in `early`:
-- the releases (`released`), the claim's own part (held, cancelled), what is due and the room read.
local early = nil
-- A claim handing nothing over (most claims under load: releases ride on one claim in a batch) answers before
-- even the few functions the others need.
if op == 'claim' and tonumber(ARGV[20]) == 0 and #ARGV == 20 then
  local held, cancelled = claimOwn(ARGV[13])
  local runs = held == 1 and cancelled == 0
  if not (runs and ARGV[15] == '1' and nothingQueued()) then return claimReply(held, cancelled, 0) end
  local due, firsts = dueNow()
  if not due then return claimReply(held, cancelled, { {}, nextWake(firsts), now, 0, {} }) end
  early = { held = held, cancelled = cancelled, due = due }
end

-- The wait list is sized by the workers alive now (each registers while it dispatches): with none, nothing
-- is promoted, so jobs keep waiting fairly instead of piling up in BullMQ's FIFO for the first worker back.
-- Forgets the workers whose registration lapsed; true when there were any.
local function sweepWorkers()
  local gone = rcall('ZRANGEBYSCORE', K_WORKERS, '-inf', now)
  if #gone == 0 then return false end
  rcall('ZREMRANGEBYSCORE', K_WORKERS, '-inf', now)
  rcall('HDEL', K_WORKERCONC, unpack(gone))
  return true
end

-- The sum of the registered workers' asks (lapsed ones included until swept).
local function askSum()
  local total = 0
  for _, a in ipairs(rcall('HVALS', K_WORKERCONC)) do total = total + tonumber(a) end
  return math.ceil(total)
end

local function bufferTarget()
  if BUFFER_ARG ~= 'w' then return tonumber(BUFFER_ARG) end
  sweepWorkers()
  return askSum()
end

-- Keep BullMQ's wait short: fairness is decided as late as possible. How many jobs the wait list lacks.
-- Only what a worker can still fetch counts: a job fetched and not yet started (claimed) already has a
-- worker's slot, and is committed whatever is dispatched after it. Counting it too (this script did) shrank
-- the buffer exactly when the workers were busy, when fetch and claim lie furthest apart: measured on a
-- backlog at concurrency 50, the worker then ran ~27 jobs at a time, with the wait list empty a fifth of the time.
-- Refilled once it lacks REFILL_MIN jobs, or half a smaller target (0 until then): jobs finishing one at a time
-- would each pay a dispatch for the one job replacing them (at concurrency 1 every claim did: ~20 of a job's ~80
-- Redis commands). A dispatch's fixed part (sweeps, lane choice, bucket writes, ~30 commands and the script's
-- function setup) is then shared by 8 jobs: at 4 (until 2026-12-05) a cache hit at concurrency 1 cost 3.8 more
-- commands and ~10 % more Redis time; each job dispatched costs ~8 commands of its own. A list refilled only at
-- half of a large target ran nearly dry under load (concurrency 50 of cache hits: 45 of 50 slots busy, not 50).
-- A job dispatched meanwhile waits no longer: it joins the list's tail either way, behind the same jobs.
-- Lapsed workers are swept only once the list lacks a batch counting their asks: most calls (a claim that finds
-- the list full enough) skip that read. Their asks only add to the room and raise the batch at most as much,
-- so a list that lacks a batch without them lacks one with them too, and the room is taken again after the sweep.
local REFILL_MIN = 8
-- The room when `queued` jobs leave a batch's worth of `target` lacking, else 0.
local function roomFor(target, queued)
  local room = target - queued
  if room < math.min(REFILL_MIN, math.ceil(target / 2)) then return 0 end
  return room
end
local function bufferRoom()
  local fixed = BUFFER_ARG ~= 'w'
  local queued = rcall('LLEN', Q_WAIT) + rcall('ZCARD', Q_PRIO)
  local room = roomFor(fixed and tonumber(BUFFER_ARG) or askSum(), queued)
  if room == 0 or fixed or not sweepWorkers() then return room end
  return roomFor(askSum(), queued)
end

-- Removes `id` from the ZSET `key` and, when it was there, takes it off `org`'s count in the HASH `counts` (the
-- field goes at 0): leases and in-flight slots, timers and an org's timed jobs. True when it was there.
local function zremCounted(key, counts, id, org)
  if rcall('ZREM', key, id) == 0 then return false end
  if rcall('HINCRBY', counts, org, -1) <= 0 then rcall('HDEL', counts, org) end
  return true
end

-- Drops a finished job's slot: its lease and its org's in-flight count; true when it held one. Slots are keyed by
-- job id (the lease), so freeing twice or after a sweep never double counts. Waking the org's lanes that wait for
-- a slot is left to the caller (freeSlot, wakeReleased below): it needs the functions created after this point.
local function dropLease(id, org) return zremCounted(K_LEASES, K_INFLIGHT, id, org) end

-- Frees the slots of the finished jobs ARGV[from..] and forgets them (a laned or timed job keeps its record): what
-- every release does, a claim's or a release op's, early (no charge corrections handed over) or on the long way.
-- Returns how many slots it freed and the orgs given one back, in order, with whether each has lanes waiting for a
-- slot (capblk; `anyCapped`): waking those is wakeReleased's, on the long way.
local function releaseSlots(from)
  local r = { freed = 0, orgs = {}, capped = {}, anyCapped = false }
  for i = from, #ARGV do
    local id = ARGV[i]
    local m = rcall('HMGET', P_JOB .. id, 'o', 'st')
    local org = m[1]
    if org then
      if dropLease(id, org) then
        r.freed = r.freed + 1
        if r.capped[org] == nil then
          r.capped[org] = rcall('EXISTS', P_CAPBLK .. org) == 1
          r.anyCapped = r.anyCapped or r.capped[org]
          r.orgs[#r.orgs + 1] = org
        end
      end
      if m[2] ~= 'lane' and m[2] ~= 'timer' then rcall('DEL', P_JOB .. id) end
    end
  end
  return r
end

-- Releases handed over without charge corrections are done here; the call answers unless it must dispatch or wake
-- an org's capped lanes, and hands what it did on in `early` otherwise.
if op == 'claim' and tonumber(ARGV[20]) == 0 and #ARGV > 20 then
  early = { released = releaseSlots(21) }
  if not early.released.anyCapped then
    local held, cancelled = claimOwn(ARGV[13])
    -- As the handed path below: the room first, the sweeps only when the list lacks a batch.
    local room = bufferRoom()
    local due = room > 0 and dueNow()
    if not due then return claimReply(held, cancelled, 0) end
    early.held, early.cancelled, early.room, early.due = held, cancelled, room, due
  end
elseif op == 'release' and tonumber(ARGV[14]) == 0 then
  early = { released = releaseSlots(15) }
  if not early.released.anyCapped then
    local freed, due = early.released.freed, dueNow()
    if not due then return { freed, 0 } end
    if ARGV[13] ~= '1' then return { freed, 1 } end
    early.due = due
  end
end

-- The rest of the keys (see the header).
local K_SLEEPWHY, K_OTIMERS, K_VT, K_GVT, K_SEQ = FP .. 'sleepwhy', FP .. 'otimers', FP .. 'vt', FP .. 'gvt', FP .. 'seq'
local K_MBLOCK, K_MBLOCKWHY, K_MLIMITS = FP .. 'mblock', FP .. 'mblockwhy', FP .. 'mlimits'
local K_THROTTLED, K_SLEEPSTART, K_LEASEREQ = FP .. 'throttled', FP .. 'sleepstart', FP .. 'leasereq'
local P_LANE, P_OLANES, P_PLAN, P_LEASEWAIT = FP .. 'lane:', FP .. 'olanes:', FP .. 'plan:', FP .. 'leasewait:'
local P_TB_RPM_ORG, P_TB_TPM_ORG, P_TB_RPM_MODEL, P_TB_TPM_MODEL = TB .. 'rpm:org:', TB .. 'tpm:org:', TB .. 'rpm:model:', TB .. 'tpm:model:'
local P_ORGJOBS = AP .. 'org-jobs:'
local Q_DELAYED, Q_META, Q_ACTIVE, Q_PC, Q_EVENTS, Q_MARKER = QK .. 'delayed', QK .. 'meta', QK .. 'active', QK .. 'pc', QK .. 'events', QK .. 'marker'

-- Every key, in fair-keys.ts FAIR_KEY_NAMES order: what its test compares with the names TypeScript builds.
if op == 'keys' then
  return { K_LANES, K_SLEEP, K_SLEEPWHY, K_TIMERS, K_OTIMERS, K_LEASES, K_INFLIGHT, K_VT, K_GVT, K_SEQ, K_MBLOCK,
    K_MBLOCKWHY, K_MLIMITS, P_JOB, P_LANE, P_OLANES, P_CAPBLK, P_PLAN, P_TB_RPM_ORG, P_TB_TPM_ORG, P_TB_RPM_MODEL,
    P_TB_TPM_MODEL, Q_WAIT, Q_PRIO, Q_DELAYED, Q_JOB, K_WORKERS, K_WORKERCONC, K_THROTTLED, K_SLEEPSTART, K_WAKE,
    P_CANCEL, P_ORGJOBS, Q_META, Q_ACTIVE, Q_PC, Q_EVENTS, Q_MARKER, K_LEASEREQ, P_LEASEWAIT }
end

-- Lane id is "<org>|<model>"; model names never contain '|' (checked in TS), org ids may.
local function splitLane(lane) return string.match(lane, '^(.*)|([^|]*)$') end
local function laneOf(org, model) return org .. '|' .. model end

-- Read on first use: most calls (claim, release, a dispatch with nothing due) never need it.
local gvtValue = nil
local gvtDirty = false
local function gvt()
  if gvtValue == nil then gvtValue = tonumber(rcall('GET', K_GVT)) or 0 end
  return gvtValue
end

local planCache = {}
local function plan(org)
  local p = planCache[org]
  if p then return p end
  local h = rcall('HMGET', P_PLAN .. org, 'weight', 'concurrency', 'rpmPro', 'rpmFlash', 'tpm')
  p = { weight = tonumber(h[1]) or DEF.weight, conc = tonumber(h[2]) or DEF.conc, ownRpmPro = tonumber(h[3]), ownRpmFlash = tonumber(h[4]),
    rpmPro = tonumber(h[3]) or DEF.rpmPro, rpmFlash = tonumber(h[4]) or DEF.rpmFlash, tpm = tonumber(h[5]) or DEF.tpm }
  if not (p.weight > 0) then p.weight = DEF.weight end
  planCache[org] = p
  return p
end

-- A model's stored limits (raw strings; false = unset), read once per script call: enqueue compares them with
-- the producer's before writing, and the dispatch that follows reads them from here.
local limitsCache = {}
local function storedLimits(model)
  local l = limitsCache[model]
  if l then return l end
  l = rcall('HMGET', K_MLIMITS, 'orgrpm:' .. model, 'rpm:' .. model, 'tpm:' .. model)
  limitsCache[model] = l
  return l
end

-- A model's stored limits and block, read once per script call (dispatch tries many lanes of one model).
local modelCache = {}
local function modelInfo(model)
  local mi = modelCache[model]
  if mi then return mi end
  local h = storedLimits(model)
  mi = { orgRpm = tonumber(h[1]), rpm = tonumber(h[2]) or 0, tpm = tonumber(h[3]) or 0,
    blockedUntil = tonumber(rcall('HGET', K_MBLOCK, model)) or 0 }
  modelCache[model] = mi
  return mi
end

-- An org's lanes, read once per call until this call adds or drops one of them.
local olanesCache = {}
local function orgLanes(org)
  local m = olanesCache[org]
  if not m then
    m = rcall('SMEMBERS', P_OLANES .. org)
    olanesCache[org] = m
  end
  return m
end

-- Sets an org's virtual time and moves all of its active lanes with it (they share one vt). `lanes`: the ones to
-- move when the caller knows them (a dispatch's run, below: its one lane, or none once it left the race).
local function setVt(org, v, lanes)
  rcall('HSET', K_VT, org, fmt(v))
  for _, l in ipairs(lanes or orgLanes(org)) do
    rcall('ZADD', K_LANES, 'XX', fmt(v), l)
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

-- Makes a non-empty lane a candidate unless it already is one, or sleeps, or waits for an org slot.
-- `woken`: the caller just took it out of the sleepers (no need to ask).
local function activate(lane, org, woken)
  if rcall('ZSCORE', K_LANES, lane) or (not woken and rcall('ZSCORE', K_SLEEP, lane)) or (not capblkEmpty[org] and rcall('SISMEMBER', P_CAPBLK .. org, lane) == 1) then
    return
  end
  local v = catchUpVt(org)
  rcall('ZADD', K_LANES, fmt(v), lane)
end

-- Takes a lane out of the sleepers, adding the time it slept to its org's throttled seconds (a metric).
local function unsleep(lane)
  if rcall('ZREM', K_SLEEP, lane) == 0 then return false end
  rcall('HDEL', K_SLEEPWHY, lane)
  local since = tonumber(rcall('HGET', K_SLEEPSTART, lane))
  if since then
    rcall('HDEL', K_SLEEPSTART, lane)
    rcall('HINCRBYFLOAT', K_THROTTLED, splitLane(lane), string.format('%.3f', math.max(0, now - since) / 1000))
  end
  return true
end

-- True when the lane was empty (and is now forgotten).
local function dropLaneIfEmpty(lane, org)
  if rcall('EXISTS', P_LANE .. lane) == 0 then
    rcall('ZREM', K_LANES, lane)
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
  rcall('HSET', P_JOB .. id, 'st', 'timer', 'r', reason)
end

local function removeTimer(id, org) return zremCounted(K_TIMERS, K_OTIMERS, id, org) end

local function removeFromLane(id, org, model)
  local lane = laneOf(org, model)
  local removed = rcall('ZREM', P_LANE .. lane, id) == 1
  dropLaneIfEmpty(lane, org)
  return removed
end

local function sleepLane(lane, untilMs, why)
  rcall('ZREM', K_LANES, lane)
  rcall('ZADD', K_SLEEP, fmt(untilMs), lane)
  rcall('HSET', K_SLEEPWHY, lane, why)
  rcall('HSETNX', K_SLEEPSTART, lane, now)
end

-- Bucket levels this call read or charged (key -> level at nowF), and the charged ones not written yet (key ->
-- {cap, rate}): a dispatch of k jobs of one lane reads each of its buckets once and writes it once, not k
-- times. Written by flushBuckets before the dispatch returns.
local bucketLevels, bucketsDirty = {}, {}

-- Bucket level now, in the {tokens, ts} format of guards/lua/token-bucket-take-N.lua (missing = full).
local function level(key, cap, rate)
  local lv = bucketLevels[key]
  if lv then return lv end
  local s = rcall('HMGET', key, 'tokens', 'ts')
  if not s[1] then lv = cap else lv = math.min(cap, tonumber(s[1]) + math.max(0, nowF - tonumber(s[2])) * rate) end
  bucketLevels[key] = lv
  return lv
end

local function chargeBucket(key, cap, rate, lv)
  bucketLevels[key] = lv
  bucketsDirty[key] = { cap, rate }
end

-- Writes a bucket this call charged (one HSET and PEXPIRE); nothing when it charged none.
local function writeBucket(key)
  local b = bucketsDirty[key]
  if not b then return end
  local lv = bucketLevels[key]
  rcall('HSET', key, 'tokens', fmt(lv), 'ts', string.format('%.3f', nowF))
  rcall('PEXPIRE', key, math.ceil((b[1] - lv) / b[2]) + 1000)
  bucketsDirty[key] = nil
end

local function flushBuckets()
  for key in pairs(bucketsDirty) do writeBucket(key) end
end

-- A reservoir's level (leased mode): what the shard holds of the model's global bucket; missing = nothing.
local function reservoirLevel(key)
  return tonumber(rcall('HGET', key, 'tokens')) or 0
end

local function setReservoir(key, lv)
  rcall('HSET', key, 'tokens', fmt(lv))
  rcall('PEXPIRE', key, RESERVOIR_TTL_MS)
end

-- Lease requests this call made (model -> {model, requests short, tokens short}), returned with its dispatch.
local leaseWants = {}
local leaseWantList = {}

-- A number in a hash field (missing = 0), read once per call into `cache` (field -> number).
local function hashNumberOnce(cache, key, field)
  local v = cache[field]
  if v == nil then
    v = tonumber(rcall('HGET', key, field)) or 0
    cache[field] = v
  end
  return v
end

-- When the shard's lease request for `model` stands until (0 = none): asked for and not answered yet, or
-- refused by the global bucket until then.
local leaseReqCache = {}
local function leasePending(model)
  return hashNumberOnce(leaseReqCache, K_LEASEREQ, model)
end

-- The org's per-model RPM: the org's own plan wins, then the model's configured per-org rpm, then the
-- default for the model's tier.
local function orgRpmOf(p, mi, model)
  local pro = string.find(model, 'pro', 1, true) ~= nil
  local r
  if pro then r = p.ownRpmPro else r = p.ownRpmFlash end
  if r == nil then r = mi.orgRpm end
  if r == nil then
    if pro then r = p.rpmPro else r = p.rpmFlash end
  end
  return r
end

-- The org's lane whose head job comes first (priority, then arrival), among its active lanes.
local function bestLaneOf(org, fallback)
  local members = orgLanes(org)
  if #members < 2 then return fallback end
  local best, bestScore = fallback, nil
  for _, l in ipairs(members) do
    if rcall('ZSCORE', K_LANES, l) then
      local h = rcall('ZRANGE', P_LANE .. l, 0, 0, 'WITHSCORES')
      if #h > 0 and (bestScore == nil or tonumber(h[2]) < bestScore) then
        best, bestScore = l, tonumber(h[2])
      end
    end
  end
  return best
end

-- A dispatch's per-job writes to shared keys, made once per call by flushDispatched (the same final state as a
-- command per job; nothing in the call reads them back but the org's in-flight count, through inflightOf):
-- the slots' leases (ZADD pairs), the orgs' in-flight counts (org -> jobs dispatched), the jobs promoted into
-- BullMQ's wait list (in push order), and BullMQ's base marker (promote adds it per job: the same member and
-- score, so once).
local leaseAdds, inflightAdded, inflightRead, waitPushes = {}, {}, {}, {}
local markerDue = false

-- An org's slots held now: the stored count (read once per call) plus what this call dispatched.
local function inflightOf(org)
  return hashNumberOnce(inflightRead, K_INFLIGHT, org) + (inflightAdded[org] or 0)
end

local function flushDispatched()
  if #leaseAdds > 0 then rcall('ZADD', K_LEASES, unpack(leaseAdds)) end
  for org, n in pairs(inflightAdded) do rcall('HINCRBY', K_INFLIGHT, org, n) end
  -- LPUSH a b c pushes a, then b, then c: the order promote's one LPUSH per job gave.
  if #waitPushes > 0 then rcall('LPUSH', Q_WAIT, unpack(waitPushes)) end
  if markerDue then rcall('ZADD', Q_MARKER, 0, '0') end
  leaseAdds, inflightAdded, inflightRead, waitPushes, markerDue = {}, {}, {}, {}, false
end

-- Tries to dispatch the head job of `lane`: returns its id, the org's virtual time after it and whether the lane
-- is still a candidate; or nil after parking the lane where it waits. `deferVt`: the caller writes that virtual
-- time (a run of one lane, see dispatch), not this call.
-- A lane's bucket names (org RPM, org TPM, model RPM, model TPM), built once per call: a run dispatches many jobs
-- of one lane.
local bucketKeysOf = {}
local function laneBucketKeys(lane, org, model)
  local k = bucketKeysOf[lane]
  if not k then
    k = { P_TB_RPM_ORG .. org .. ':' .. model, P_TB_TPM_ORG .. org .. ':' .. model, P_TB_RPM_MODEL .. model, P_TB_TPM_MODEL .. model }
    bucketKeysOf[lane] = k
  end
  return k
end

local function tryLane(lane, org, model, v, deferVt)
  -- The second entry only tells whether the lane still holds a job after the head leaves.
  local head = rcall('ZRANGE', P_LANE .. lane, 0, 1)
  if #head == 0 then
    dropLaneIfEmpty(lane, org)
    return nil
  end
  local id = head[1]
  local mi = modelInfo(model)
  local blockedUntil = mi.blockedUntil
  if blockedUntil > now then
    sleepLane(lane, blockedUntil, 'model:' .. model)
    return nil
  end
  local p = plan(org)
  if p.conc > 0 and inflightOf(org) >= p.conc then
    rcall('ZREM', K_LANES, lane)
    rcall('SADD', P_CAPBLK .. org, lane)
    capblkEmpty[org] = nil
    return nil
  end
  local est = tonumber(rcall('HGET', P_JOB .. id, 'e')) or 0
  local orgRpm = orgRpmOf(p, mi, model)
  -- The 4th field marks request-count buckets: their cost for the lane's next job is known (1) now. A
  -- batch lane (batch-tier jobs, fair-plan.ts BATCH_LANE_SUFFIX) is limited by no online bucket.
  local candidates = {}
  if string.sub(model, -#BATCH_LANE) ~= BATCH_LANE then
    -- The 5th field marks a leased reservoir (ARGV[12]); the 6th is where its shortfall is reported.
    local k = laneBucketKeys(lane, org, model)
    candidates = {
      { k[1], orgRpm, 1, true, false },
      { k[2], p.tpm, est, false, false },
      { k[3], mi.rpm, 1, true, LEASED, 2 },
      { k[4], mi.tpm, est, false, LEASED, 3 },
    }
  end
  -- All or nothing: check every bucket before charging any.
  local buckets, wait, limiting = {}, 0, nil
  local short, reservoirShort = { model, 0, 0 }, false
  for _, c in ipairs(candidates) do
    local cap = c[2]
    if cap and cap > 0 then
      local rate = cap / 60000
      -- A cost above capacity is admitted on a full bucket and leaves a debt (as token-bucket-take does).
      local need = math.min(c[3], cap)
      local lv
      if c[5] then
        lv = reservoirLevel(c[1])
        if lv < need then
          short[c[6]] = need - lv
          reservoirShort = true
          -- The lane waits for the lease already asked for (or refused until then), else for the one it asks for.
          local pending = leasePending(model)
          local w = pending > now and pending - now or LEASE_WAIT_MS
          if w > wait then wait, limiting = w, c[1] end
        end
      else
        lv = level(c[1], cap, rate)
        if lv < need then
          local w = math.ceil((need - lv) / rate)
          if w > wait then wait, limiting = w, c[1] end
        end
      end
      buckets[#buckets + 1] = { c[1], cap, rate, lv - c[3], c[4], c[5] }
    end
  end
  if limiting then
    sleepLane(lane, math.ceil(nowF + wait), limiting)
    -- Asleep on its shard's reservoir: woken by the lease (op lease), and a lease is asked for unless one stands.
    local k = laneBucketKeys(lane, org, model)
    if reservoirShort and (limiting == k[3] or limiting == k[4]) then
      rcall('SADD', P_LEASEWAIT .. model, lane)
      rcall('PEXPIRE', P_LEASEWAIT .. model, RESERVOIR_TTL_MS)
      if leasePending(model) <= now then
        leaseReqCache[model] = now + LEASE_WAIT_MS
        rcall('HSET', K_LEASEREQ, model, fmt(now + LEASE_WAIT_MS))
        leaseWants[model] = short
        leaseWantList[#leaseWantList + 1] = model
      elseif leaseWants[model] then
        -- Asked for in this call: the largest shortfall of its lanes.
        local w = leaseWants[model]
        w[2], w[3] = math.max(w[2], short[2]), math.max(w[3], short[3])
      end
    end
    return nil
  end
  for _, b in ipairs(buckets) do
    if b[6] then
      setReservoir(b[1], b[4])
    else
      chargeBucket(b[1], b[2], b[3], b[4])
    end
  end
  rcall('ZREM', P_LANE .. lane, id)
  leaseAdds[#leaseAdds + 1] = leaseDeadline()
  leaseAdds[#leaseAdds + 1] = id
  inflightAdded[org] = (inflightAdded[org] or 0) + 1
  rcall('HSET', P_JOB .. id, 'st', 'lease')
  -- Start-time fair queueing: the global virtual time is the start tag of the job just dispatched.
  if v > gvt() then
    gvtValue = v
    gvtDirty = true
  end
  local nv = v + 1 / p.weight
  if not deferVt then setVt(org, nv) end
  -- A request-count bucket this job emptied refuses the lane's next job until it refills: the lane sleeps
  -- now, as the next try would make it (same wake time or earlier; the wake-up checks every bucket again),
  -- instead of being read again by this call and woken again for the same answer.
  local nextWait, nextLimit = 0, nil
  for _, b in ipairs(buckets) do
    local need = math.min(1, b[2])
    -- (A reservoir does not refill: the lane's next try asks for a lease instead.)
    if b[5] and not b[6] and b[4] < need then
      local w = math.ceil((need - b[4]) / b[3])
      if w > nextWait then nextWait, nextLimit = w, b[1] end
    end
  end
  local emptied = #head < 2 and dropLaneIfEmpty(lane, org)
  if not emptied and nextLimit then sleepLane(lane, math.ceil(nowF + nextWait), nextLimit) end
  return id, nv, not emptied and not nextLimit
end

-- BullMQ's promote (bullmq 6.x commands/promote-9.lua with its includes addJobInTargetList,
-- addJobWithPriority, getPriorityScore, isQueuePausedOrMaxed), done here so a dispatched job costs no
-- round trip of its own. test/fair-scheduler.test.ts ("exactly as BullMQ's own promote") compares it with BullMQ's script on
-- the installed version. False when the job is no longer delayed (removed, or promoted by hand).
local pausedOrMaxed
local markerChecked = false
local function promoteParked(id)
  if rcall('ZREM', Q_DELAYED, id) == 0 then return false end
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
    local marker = rcall('LINDEX', Q_WAIT, 0)
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
  rcall('HSET', jobKey, 'delay', 0)
  return true
end

local function jobMeta(id)
  return rcall('HMGET', P_JOB .. id, 'o', 'm', 'p', 's', 'st')
end

local function moveDueTimers()
  for _, id in ipairs(rcall('ZRANGEBYSCORE', K_TIMERS, '-inf', now, 'LIMIT', 0, SWEEP_MAX)) do
    local m = jobMeta(id)
    if m[1] then
      removeTimer(id, m[1])
      -- Behind the jobs that waited meanwhile, as BullMQ puts a retry at the end of its wait list: the job
      -- that just failed (or was refused by an open breaker) is not the next probe every time.
      local seq = rcall('INCR', K_SEQ)
      rcall('HSET', P_JOB .. id, 's', seq)
      pushJob(id, m[1], m[2], tonumber(m[3]), seq)
    else
      rcall('ZREM', K_TIMERS, id)
    end
  end
end

local function wakeSleepers()
  for _, lane in ipairs(rcall('ZRANGEBYSCORE', K_SLEEP, '-inf', now, 'LIMIT', 0, SWEEP_MAX)) do
    unsleep(lane)
    local org = splitLane(lane)
    if rcall('EXISTS', P_LANE .. lane) == 1 then activate(lane, org, true) else dropLaneIfEmpty(lane, org) end
  end
end

-- Expired leases: finished or vanished -> free; still parked (a crash between a retry and its repark, or a
-- lease left by a version that promoted in a call of its own) -> free and back to the head of its lane; in wait / active -> extend.
local function sweepLeases()
  for _, id in ipairs(rcall('ZRANGEBYSCORE', K_LEASES, '-inf', now, 'LIMIT', 0, SWEEP_MAX)) do
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
          freeSlot(id, org)
          pushJob(id, org, m[2], tonumber(m[3]), tonumber(m[4]))
        else
          rcall('ZADD', K_LEASES, leaseDeadline(), id)
        end
      end
    end
  end
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
  while #out < limit do
    if not inRun then
      local top = rcall('ZRANGE', K_LANES, 0, 1, 'WITHSCORES')
      if #top == 0 then break end
      org = splitLane(top[1])
      lane = bestLaneOf(org, top[1])
      model = select(2, splitLane(lane))
      v, bound, single = tonumber(top[2]), tonumber(top[4]), #orgLanes(org) < 2
    end
    tries = tries + 1
    if tries > limit + SWEEP_MAX then
      more = 1
      break
    end
    local id, nv, stays = tryLane(lane, org, model, v, single)
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
    -- A leased job that is no longer parked (removed meanwhile) keeps its lease: the lease sweep recovers it.
    if id and promoteParked(id) then out[#out + 1] = id end
  end
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
  return { out, nextWake(), now, more, skipped or {}, wants }
end

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

-- True when it gave tokens back to a limited bucket (a lane may be asleep on it). A leased reservoir is
-- corrected in place (clamped as a bucket: a debt the next lease pays first).
local function adjustBucket(key, cap, delta, reservoir)
  if delta == 0 or not cap or cap <= 0 then return false end
  if reservoir then
    setReservoir(key, math.max(-cap, math.min(cap, reservoirLevel(key) - delta)))
  else
    -- The include reads and writes the bucket itself: what this call charged is written first, and read again.
    writeBucket(key)
    bucketLevels[key] = nil
    tokenBucketAdjust(key, cap, cap / 60000, delta, nowF)
  end
  return delta < 0
end

-- Corrects what was charged for calls of `org` to `model`: tokens to the org's and the model's TPM buckets
-- (the dispatch charged the estimate), requests to the org's and the model's RPM buckets (-1 gives back the
-- request a dispatch charged for a job that called no model: a cache hit, a job cancelled or refused before
-- its call). Each only where that limit is set, corrected as the rate limiter corrects its own.
local function correctCharge(org, model, orgTokens, modelTokens, requests)
  local p, mi = plan(org), modelInfo(model)
  local names = laneBucketKeys(laneOf(org, model), org, model)
  local keys = { names[2], names[4], names[1], names[3] }
  local caps = { p.tpm, mi.tpm, 0, 0 }
  local deltas = { orgTokens, modelTokens, requests, requests }
  if requests ~= 0 then caps[3], caps[4] = orgRpmOf(p, mi, model), mi.rpm end
  -- Only a lane asleep on a bucket that got tokens back is woken: one asleep on another bucket (say the org's
  -- RPM, while a call's TPM is corrected down) would only go back to sleep. Unlimited buckets are not kept.
  local refunded, any = {}, false
  for k = 1, 4 do
    if adjustBucket(keys[k], caps[k], deltas[k], LEASED and (k == 2 or k == 4)) then
      refunded[keys[k]] = true
      any = true
    end
  end
  if any then wakeRefunded(org, refunded) end
end

-- Charge corrections handed over from ARGV[i] (see correctCharge): their count, then per entry org, model,
-- org tokens, model tokens, requests. Returns the index of the first argument after them.
local function applyCorrections(i)
  local n = tonumber(ARGV[i]) or 0
  for k = 0, n - 1 do
    local j = i + 1 + k * 5
    correctCharge(ARGV[j], ARGV[j + 1], tonumber(ARGV[j + 2]), tonumber(ARGV[j + 3]), tonumber(ARGV[j + 4]))
  end
  return i + 1 + n * 5
end

if op == 'dispatch' then
  if ARGV[13] and ARGV[13] ~= '' then
    rcall('ZADD', K_WORKERS, now + tonumber(ARGV[15]), ARGV[13])
    rcall('HSET', K_WORKERCONC, ARGV[13], ARGV[14])
  end
  return dispatch()
elseif op == 'enqueue' then
  local skipped = {}
  local limitsStored = {}
  -- One INCRBY for the whole call's sequence numbers (a job already known or skipped leaves a gap: they only order).
  local jobs = math.floor((#ARGV - 13) / 10)
  local seq = jobs > 0 and rcall('INCRBY', K_SEQ, jobs) - jobs or 0
  -- The ZADDs are sent once per org index and per lane, not once per job (from Lua a command costs about as
  -- much as the work it does here): about 9 % less script time for 100-job calls. The parked check stays one
  -- ZSCORE per job: a ZMSCORE of the call's ids measured 40 % slower than these ZSCOREs (Redis 7.0).
  -- Key -> {score, member, ...}, the keys also listed in first-seen order (a key is a string, never an index).
  local function addMember(groups, key, score, member)
    local g = groups[key]
    if not g then g = {}; groups[key] = g; groups[#groups + 1] = key end
    g[#g + 1] = score
    g[#g + 1] = member
  end
  local index, laneAdds, laneOrg = {}, {}, {}
  for k = 1, jobs do
    local i = 14 + (k - 1) * 10
    local id, org, model = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    -- The org's job index (GET /v1/jobs), in this call instead of a round trip of its own; NX keeps the first
    -- enqueue time of an idempotent re-enqueue. Whatever the lane decides below: the BullMQ job exists.
    if ARGV[i + 9] ~= '' then addMember(index, org, ARGV[i + 9], id) end
    local score = tonumber(rcall('ZSCORE', Q_DELAYED, id))
    if rcall('EXISTS', P_JOB .. id) == 1 then
      -- Already known (an earlier call, or earlier in this one): enqueue is idempotent by job id.
    elseif not score or score < PARK_SCORE then
      -- Only parked BullMQ jobs may enter a lane; anything else would be run twice or never.
      skipped[#skipped + 1] = id
    else
      seq = seq + 1
      local notBefore = tonumber(ARGV[i + 7])
      -- The stage goes with the fields (addTimer writes its reason beside it).
      local stage = notBefore > now and 'timer' or 'lane'
      rcall('HSET', P_JOB .. id, 'o', org, 'm', model, 'p', ARGV[i + 3], 'e', ARGV[i + 4], 's', seq, 'st', stage)
      -- A producer that does not know the model's limits ('') leaves the ones the deployment stored. Written
      -- once per model and call (one producer's entries for a model carry the same limits), and only where
      -- they differ from the stored ones: the last writer still wins, and the usual call writes nothing.
      if not limitsStored[model] then
        limitsStored[model] = true
        local cur = storedLimits(model)
        local orgRpm, rpm, tpm = ARGV[i + 8], ARGV[i + 5], ARGV[i + 6]
        local changed = false
        if rpm ~= '' and cur[2] ~= rpm then rcall('HSET', K_MLIMITS, 'rpm:' .. model, rpm); cur[2] = rpm; changed = true end
        if tpm ~= '' and cur[3] ~= tpm then rcall('HSET', K_MLIMITS, 'tpm:' .. model, tpm); cur[3] = tpm; changed = true end
        if orgRpm == '' then
          if cur[1] then rcall('HDEL', K_MLIMITS, 'orgrpm:' .. model); cur[1] = false; changed = true end
        elseif cur[1] ~= orgRpm then
          rcall('HSET', K_MLIMITS, 'orgrpm:' .. model, orgRpm); cur[1] = orgRpm; changed = true
        end
        if changed then modelCache[model] = nil end
      end
      if notBefore > now then
        addTimer(id, org, notBefore, 'delayed')
      else
        local lane = laneOf(org, model)
        laneOrg[lane] = org
        addMember(laneAdds, lane, laneScore(tonumber(ARGV[i + 3]), seq), id)
      end
    end
  end
  for _, org in ipairs(index) do rcall('ZADD', P_ORGJOBS .. org, 'NX', unpack(index[org])) end
  -- Each lane's jobs in one ZADD, then the lane joins its org's set and the race once (activate reads
  -- neither the lane's jobs nor anything the loop above writes).
  for _, lane in ipairs(laneAdds) do
    local org = laneOrg[lane]
    rcall('ZADD', P_LANE .. lane, unpack(laneAdds[lane]))
    if rcall('SADD', P_OLANES .. org, lane) == 1 then olanesCache[org] = nil end
    activate(lane, org)
  end
  if ARGV[13] == '1' then return dispatch(skipped) end
  return { {}, '0', now, 0, skipped }
elseif op == 'release' then
  -- `early`: released above (no corrections), here to wake capped lanes or to dispatch what it found due.
  local freed
  if early then freed = wakeReleased(early.released) else freed = releaseFrom(applyCorrections(14)) end
  -- Whether a dispatch now could do anything: skipped otherwise (a throttled org's finished job would only
  -- find its lane asleep; the armed wake-up or the safety poll comes back for it). With ARGV[13] = '1' the
  -- dispatch runs here, in the release's round trip.
  local due = (early and early.due) or dueNow()
  if not due then return { freed, 0 } end
  if ARGV[13] == '1' then return { freed, 1, dispatch(nil, due) } end
  return { freed, 1 }
elseif op == 'repark' then
  local id, notBefore = ARGV[13], tonumber(ARGV[14])
  local m = jobMeta(id)
  local org, model = m[1], m[2]
  if not org then return 0 end
  freeSlot(id, org)
  if m[5] == 'lane' then removeFromLane(id, org, model) end
  if notBefore > now then
    addTimer(id, org, notBefore, ARGV[15])
  else
    removeTimer(id, org)
    pushJob(id, org, model, tonumber(m[3]), tonumber(m[4]))
  end
  return 1
elseif op == 'cancel' then
  local id = ARGV[13]
  local m = jobMeta(id)
  local done = false
  if m[1] and m[5] == 'lane' then done = removeFromLane(id, m[1], m[2]) end
  if m[1] and m[5] == 'timer' then done = removeTimer(id, m[1]) end
  -- Dispatched but not started (it sits in BullMQ's wait): the slot goes back with the job, and so does what
  -- its dispatch charged (a batch lane was charged nothing).
  if m[1] and m[5] == 'lease' then
    done = freeSlot(id, m[1])
    if done and string.sub(m[2], -#BATCH_LANE) ~= BATCH_LANE then
      local est = tonumber(rcall('HGET', P_JOB .. id, 'e')) or 0
      correctCharge(m[1], m[2], -est, -est, -1)
    end
  end
  if done then rcall('DEL', P_JOB .. id) end
  return done and 1 or 0
elseif op == 'claim' then
  local id = ARGV[13]
  -- Releases handed over (the ids after the corrections): the worker's jobs that finished just before this one
  -- started. At one job after another that is every release, and it costs no round trip of its own here.
  local from = applyCorrections(20)
  local handed = #ARGV >= from
  -- Released above when they came without corrections (`early.released`): capped lanes are woken here.
  if early and early.released then wakeReleased(early.released) elseif handed then releaseFrom(from) end
  -- The claim's own part, done above when `early` came this far to dispatch.
  local held, cancelled
  if early and early.held then held, cancelled = early.held, early.cancelled else held, cancelled = claimOwn(id) end
  -- Handed releases: as release with dispatch, freed slots are filled now when anything is due and the wait
  -- list lacks enough for a batch (bufferRoom).
  -- Refill (ARGV[15] = '1'): the job just took the last one from BullMQ's wait list, so the next one is
  -- dispatched now, while this one runs, and is there when it finishes (BullMQ's moveToFinished then fetches
  -- it in the same call). Dispatching only on release would leave the list empty at every finish at low
  -- load: a blocking marker wait and a second fetch per job. Only when the list is empty: a list that still
  -- holds jobs is refilled by the releases, in batches, at one dispatch's fixed cost per batch, not per job.
  local d = 0
  if handed then
    -- The room first: while the list lacks less than a batch, the sweeps wait for the next dispatch too.
    local room, due = early and early.room, early and early.due
    if not room then
      room = bufferRoom()
      due = room > 0 and dueNow()
    end
    if due then d = dispatch(nil, due, room) end
  elseif held == 1 and cancelled == 0 and ARGV[15] == '1' then
    -- `early`: the check above found nothing queued, in this same call.
    local room
    if early then room = bufferTarget() else room = roomIfEmpty() end
    if room and room > 0 then d = dispatch(nil, early and early.due, room) end
  end
  return claimReply(held, cancelled, d)
elseif op == 'orphans' then
  -- Parked jobs the dispatcher does not know (a producer died between the BullMQ add and the lane): the
  -- caller lanes them again. Pages by rank among parked jobs (their scores repeat: BullMQ's counter wraps).
  local base = rcall('ZCOUNT', Q_DELAYED, '-inf', '(' .. ARGV[8])
  local from = base + tonumber(ARGV[13])
  local page = rcall('ZRANGE', Q_DELAYED, from, from + tonumber(ARGV[14]) - 1)
  local out = {}
  for _, id in ipairs(page) do
    if rcall('EXISTS', P_JOB .. id) == 0 then out[#out + 1] = id end
  end
  return { out, #page }
elseif op == 'plan' or op == 'wake' then
  local org = ARGV[13]
  if op == 'plan' then
    local fields = { 'weight', 'concurrency', 'rpmPro', 'rpmFlash', 'tpm' }
    for k, f in ipairs(fields) do
      local v = ARGV[13 + k]
      if v == '' then rcall('HDEL', P_PLAN .. org, f) else rcall('HSET', P_PLAN .. org, f, v) end
    end
  end
  -- Limits raised or tokens refunded: give every waiting lane of the org a fresh look at the next dispatch
  -- (a lane that still lacks room just goes back to sleep with a new wake time).
  wakeCapBlocked(org)
  for _, l in ipairs(rcall('SMEMBERS', P_OLANES .. org)) do
    if unsleep(l) then activate(l, org, true) end
  end
  return 1
elseif op == 'lease' then
  -- What the caller took from the model's global buckets (model-lease-2.lua) goes into this shard's reservoirs,
  -- and the lanes asleep for it get a look in this call's dispatch. Nothing granted: the global bucket has
  -- no room until ARGV[16], so the lanes sleep until then and the next lease is asked for then.
  local model, requests, tokens, retryAt = ARGV[13], tonumber(ARGV[14]), tonumber(ARGV[15]), tonumber(ARGV[16])
  local rkey, tkey = P_TB_RPM_MODEL .. model, P_TB_TPM_MODEL .. model
  if requests > 0 then setReservoir(rkey, reservoirLevel(rkey) + requests) end
  if tokens > 0 then setReservoir(tkey, reservoirLevel(tkey) + tokens) end
  local waiting = P_LEASEWAIT .. model
  local lanes = rcall('SMEMBERS', waiting)
  local granted = requests > 0 or tokens > 0
  if granted then
    rcall('HDEL', K_LEASEREQ, model)
    rcall('DEL', waiting)
  else
    rcall('HSET', K_LEASEREQ, model, fmt(retryAt))
  end
  -- Only lanes still asleep on this model's reservoir: one woken meanwhile (a refund, a plan change) is left as it is.
  local whys = #lanes > 0 and rcall('HMGET', K_SLEEPWHY, unpack(lanes)) or {}
  for k, l in ipairs(lanes) do
    if whys[k] == rkey or whys[k] == tkey then
      if granted then
        unsleep(l)
        local org = splitLane(l)
        if rcall('EXISTS', P_LANE .. l) == 1 then activate(l, org, true) else dropLaneIfEmpty(l, org) end
      else
        rcall('ZADD', K_SLEEP, 'XX', fmt(retryAt), l)
      end
    elseif not granted then
      rcall('SREM', waiting, l)
    end
  end
  if granted then return dispatch() end
  return { {}, nextWake(), now, 0, {} }
elseif op == 'block' then
  local model, untilMs = ARGV[13], tonumber(ARGV[14])
  if untilMs > now then
    rcall('HSET', K_MBLOCK, model, fmt(untilMs))
    rcall('HSET', K_MBLOCKWHY, model, ARGV[15])
  else
    rcall('HDEL', K_MBLOCK, model)
    rcall('HDEL', K_MBLOCKWHY, model)
  end
  return 1
end
return redis.error_reply('unknown fair op ' .. tostring(op))
