-- Weighted fair dispatcher: every state change in one script, so that each decision is atomic and the lane
-- invariants (activate / sleep / cap-block / free slot) are applied identically by every op. Its parts live in
-- includes/fair-*.lua, pasted in where this file names them (lua.ts readLua; Redis Lua has no `require`), in
-- this order: the common claim and release answer before the later parts' functions are created (see below),
-- which are created inside the function longWay (see there).
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
--   <prefix><jobId>), the org job index prefix (enqueue adds to the ZSET <prefix><org>), the idempotency records'
--   prefix (add reads and writes the HASH <prefix><jobId>, queue-keys.ts idempotencyRecordKey), the cancel
--   tombstones' prefix (add deletes the STRING <prefix><jobId> of a job it stores under a key), BullMQ's meta,
--   active, priority counter, events stream and marker (a dispatch promotes the jobs it hands out, as BullMQ's
--   promote does), leasereq HASH (model -> ms until which the shard's lease request for the model stands: in
--   flight, or refused until then), leasewait: prefix (SET <prefix><model>: lanes asleep for the model's lease)
--   5-9 (claim only, optional) the admitted job's result-cache keys: org version, org+agent version, the agent's
--   shared version, entry, single-flight lock (includes/result-cache-lookup.lua); or 5 alone: the usage stream, for an attempt
--   answered before its claim (an L1 hit from memory), whose usage row the claim appends
-- ARGV[1] op: enqueue | add | dispatch | release | repark | promote | cancel | removed | plan | wake | block | claim | orphans | lease | take | keys
-- ARGV[2] lease ms, ARGV[3] buffer target: a number of jobs, or 'w' for the sum of the live workers' asks
-- ARGV[4] the rest of the configuration, which only the long way reads, in one argument, space-separated: the default
--   plan's weight, concurrency, rpm pro, rpm flash, tpm (<= 0 = unlimited), the lowest delayed score of a parked job,
--   max jobs per dispatch, max timers / sleepers / leases handled per dispatch, leased (0|1): the model buckets are
--   this queue shard's reservoirs of the model's global buckets (QUEUE_SHARDS > 1, fair/model-leases.ts): they do not
--   refill; a lane they cannot serve sleeps, and the dispatch asks its caller (`wants`) to lease more from the global
--   bucket (op lease). Nine arguments of their own until 2026-12-08: Redis parses every argument of every call and
--   the script gets each in its ARGV table (~1,000 Redis instructions each, callgrind), and the common claim and
--   release read none of them.
-- ARGV[5..] op arguments:
--   dispatch: worker id ('' = not a worker), its ask ('=<ask>': a renewal of the same ask, see the claim's
--     registration below), registration ttl ms (registers the worker), takes the
--     wake-up (1: the caller is a dispatch loop, which arms a timer for it; else it is told, not taken: nextWake)
--   enqueue: dispatch (0|1), then per job: id, org, model, priority, est tokens, model rpm, model tpm, delay ms
--     (from now by Redis TIME, see fromNow; 0 = now), per-org rpm of the model ('' = the org's plan / default for the model's tier), org job index
--     score ('' = do not index; else ZADD NX into the org's index, known job or not)
--   add: enqueue's arguments, each job's followed by its BullMQ job fields: name ('' = not stored here: the job
--     exists), data JSON, stored opts JSON, timestamp, delay, priority, then its idempotency record: request
--     fingerprint ('' = not idempotent), record ttl ms; stores the jobs parked, as BullMQ's add of a delayed job
--     does (includes/fair-store-parked.lua), then lanes them as enqueue does, in the same call. An idempotent job
--     whose record outlived it is neither stored again nor laned nor indexed (the key is remembered: no new job);
--     one stored drops the cancel tombstone an earlier job of its id left (it describes that job, not this one)
--   claim: id, progress JSON ('' = none), refill (0|1), the worker's registration ('' = none, else '<ask> <ttl ms>
--     <worker id>', '=<ask> ...' for a renewal of the same ask, as dispatch's: a moved ask rides on the worker's next claim instead of a dispatch call of its
--     own), the result-cache lookup's L1 tag, lock token, lock ttl
--     ms and owner (read only with KEYS 5-9; with KEY 5 alone: the usage row's field name and the row,
--     then two unused), charge corrections (a count, then org, model, org tokens,
--     model tokens, requests per entry: see applyCorrections), then ids of finished jobs whose slots this claim releases
--     first: {held, cancelled, dispatch result or 0[, lookup result]}: held 1 if the job holds a slot (its
--     lease is renewed, its record stamped claimed, `c`: the charge is the attempt's to settle, see refundDispatch;
--     2 when an earlier claim of the same dispatch took that charge: a stalled job fetched again, see claimOwn,
--     and unless cancelled the job hash's `progress` field set to the JSON: the attempt's stage, at no extra command); cancelled 1 if the job's cancel marker names this job (its timestamp, or the
--     '1' of markers written before; one naming an earlier job of the id is deleted); a claim that released slots
--     dispatches when due and the wait list lacks a batch (bufferRoom), else with refill a held claim dispatches when
--     BullMQ's wait list is empty (with no active lane and a wake-up armed, the wake key set, it reads nothing more); with KEYS 5-9 a held, not cancelled claim also does the job's
--     result-cache lookup (its reply as result-cache-lookup-5.lua's); with KEY 5 alone it appends the
--     attempt's usage row (XADD) instead, only then: a job that does not run records nothing;  orphans: offset, count
--   release: dispatch (0|1|2: dispatch in this call when due; 2: due only for an active lane, the timers, sleepers and
--     leases not read, as the caller's process swept them lately), charge corrections (as claim's), then job ids;
--   repark: id, delayMs (from now by Redis TIME; see fromNow), reason, attempt (BullMQ's attemptsStarted of the attempt that parked the job; '' =
--     none: only a job waiting in its lane or on its timer is moved);  removed: refund (0|1), then ids of jobs BullMQ removed
--   promote: dispatch (0|1: this call dispatches when it made a job due), then ids (an operator's promote: each
--     job on a timer is due now; a promote-all sends a shard's timers in bounded calls and dispatches once after)
--   cancel: whole (0|1: the ids are jobs one removal takes together; none is taken when any of those read is locked), then per
--     job: id, the creation time (BullMQ's `timestamp`) of the job the caller read ('' = whichever job holds the id)
--   plan: org, weight, concurrency, rpmPro, rpmFlash, tpm ('' = use the default)
--   wake: org;  block: model, delayMs (from now by Redis TIME; see fromNow), reason (the later of the standing block
--     and this one is kept)
--   lease: model, requests granted, tokens granted, retry at ms (0 when something was granted), takes the
--     wake-up (1: a dispatch loop takes the lease's result; else told, not taken, as dispatch's)
--   take: org, model, the caller's configured per-org rpm of the model ('' = none), cost (1 takes the org's request
--     for the model, -1 gives one back), then per other bucket taken with it: name (under the buckets' prefix, e.g.
--     rpm:model:<model>), capacity, refill per ms, cost
-- Returns: dispatch / enqueue / lease {promoted ids, next wake ms (0 = none), now ms, more (0|1), skipped ids,
--          wants: per model whose reservoir a lane lacks, model, requests short, tokens short (leased only)};
--          add: enqueue's, then the number of jobs it stored (the others existed already);
--          release: {slots freed, 1 if a dispatch now has anything to do (an active lane, a due timer,
--          sleeper or lease) else 0[, dispatch result when asked and due]}; repark: 1 if done, 0 if the job is unknown, not parked or not the attempt's (see op repark);
--          cancel: {jobs taken out (0 also when `whole` found one locked), 1 if it gave capacity back (a slot, a
--          refund, a sleeping lane's head) and a dispatch had work, else 0[, then that dispatch's result: it runs in
--          the same call, the jobs given back counted out of BullMQ's wait list, which the caller removes them from]};
--          removed: {slots freed, jobs forgotten[, dispatch result: when it freed a slot and a dispatch had work, it
--          runs in the same call]}; promote: {each job's stage before the call, in the ids' order
--          ('timer': made due now; 'lane' or 'lease': due already; '' when the dispatcher does not know it),
--          dispatch result or 0};
--          plan / wake / block: 1;
--          take: {allowed (0|1), ms before the longest-waiting bucket has room, its name ('' when allowed), now ms}
--          (a give-back: 1)
--- @include "result-cache-lookup"
local rcall = redis.call
-- Redis's clock, read first by every call but one: a release that only looks for an active lane (ARGV[5] '2', see
-- dueNow) and hands over no charge corrections (ARGV[6] '0') frees its slots and, the common case, answers without
-- the time; it reads it below, before anything that uses it, only when it goes on (a lane to dispatch, capped lanes
-- to wake). A throttled org's jobs end in such releases, each a few commands (TIME was one of 7-8).
-- Numbers parsed by arithmetic (`s + 0`), not tonumber, on the common claim's and release's path: Lua 5.1's tonumber
-- runs strtod twice on a string (lua_isnumber, then lua_tonumber), as token-bucket-take-N.lua says.
local nowF, now
if ARGV[1] ~= 'release' or ARGV[5] ~= '2' or ARGV[6] ~= '0' then
  local t = rcall('TIME')
  nowF = t[1] * 1000 + t[2] / 1000
  now = math.floor(nowF)
end

local FP, TB, QK, AP = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
-- The keys the common claim and release use; the others are built after those calls have answered.
local K_LANES, K_SLEEP, K_TIMERS, K_LEASES, K_INFLIGHT = FP .. 'lanes', FP .. 'sleep', FP .. 'timers', FP .. 'leases', FP .. 'inflight'
local K_WORKERS, K_WORKERCONC, K_WAKE = FP .. 'workers', FP .. 'workerconc', FP .. 'wake'
local P_JOB, P_CAPBLK, P_CANCEL = FP .. 'job:', FP .. 'capblk:', AP .. 'cancel:'
local Q_WAIT, Q_PRIO, Q_JOB = QK .. 'wait', QK .. 'prioritized', QK
-- Suffix of a model's batch lane (fair-plan.ts BATCH_LANE_SUFFIX).
local BATCH_LANE = '@batch'

local op = ARGV[1]
-- The default plan, the parked score, the batch and sweep bounds are parsed below, after the common claim and
-- release have answered: they use none of them, and each tonumber of a string is ~1,000 Redis instructions.
local LEASE_MS = ARGV[2] + 0
local BUFFER_ARG = ARGV[3]
-- Whether the caller arms a timer for the wake-up it is handed (nextWake): a worker's claim and release (its
-- dispatch loop takes in what they dispatched), and a dispatch or lease that says so (ARGV 8 / 9). No Redis
-- command: the claim's and release's cost is unchanged.
local TAKES_WAKE = op == 'claim' or op == 'release' or (op == 'dispatch' and ARGV[8] == '1') or (op == 'lease' and ARGV[9] == '1')
-- Leased tokens unused this long lapse (a shard whose demand moved elsewhere strands at most one chunk, for a while).
local RESERVOIR_TTL_MS = 60000
-- A lane with a backlog asleep on its org's request rate (org RPM) wakes when the bucket holds what it refills in
-- `WAKE_BATCH.ms` (at most the backlog and the bucket's size), not at its first request: each wake-up is a
-- dispatch of ~50 Redis commands, and its jobs then go in one dispatch and one fetch instead of one each. A lane of one job,
-- or a rate under one request in this long, still wakes at the first request. The jobs' pace over a minute is the
-- plan's either way.
-- A lane with a minute or more of its org's request rate waiting (`deepBacklogMs`: 60 jobs at 60 RPM) wakes for
-- twice that (`deepMs`): each job then waits in the lane far longer than the batch anyway, and the wake-up's fixed
-- cost (its dispatch, BullMQ's fetch cycle of every worker the batch reaches, each worker's registration renewed by
-- its claim) is paid half as often: a churn of 10,000 jobs at 60 RPM cost ~110 Redis commands a job with 5 s
-- batches, ~1.9x its unthrottled price. One table: the script's main function was at Lua's 200 locals (before longWay).
local WAKE_BATCH = { ms = 5000, deepBacklogMs = 60000, deepMs = 10000 }

-- Numbers handed to redis.call are strings where that costs nothing (literals, ARGV, nowArg): Redis turns a Lua
-- number into its argument with a `%.17g` format, ~2,400 Redis instructions each (a claim's -1 and 1, a dispatch's
-- 0 per promoted job and `now` per sweep were ~6 per claim on average).
local nowStr
local function nowArg()
  nowStr = nowStr or string.format('%d', now)
  return nowStr
end

-- fmt: full precision (redis.call formats plain numbers with 14 digits, which would corrupt scores and vt), a whole
-- number (a lease deadline, every claim's; a lane score; a timer) as `%d`, the digits `%.17g` gives it.
--- @include "number-format"

-- A claim carrying its worker's registration (the ask moved, or its renewal is due) registers it first, as
-- dispatch does: the ask sizes the buffer this claim's own refill and releases fill.
-- An ask written '=<ask>' is a renewal: the worker's last registration, which succeeded, had this ask. Its HSET is
-- skipped while the registry still holds the worker (ZADD answers 0: only the expiry moved; 1 when it was swept
-- after lapsing, its ask gone with it): the hash holds that ask already. A throttled deployment renews every
-- worker at each wake-up, one command a worker less each time (dispatch does the same).
if op == 'claim' and ARGV[8] ~= '' then
  local renewal, ask, ttlMs, id = string.match(ARGV[8], '^(=?)(%d+) (%d+) (.+)$')
  if not id then return redis.error_reply('fair claim: bad worker registration ' .. ARGV[8]) end
  if rcall('ZADD', K_WORKERS, now + tonumber(ttlMs), id) == 1 or renewal == '' then rcall('HSET', K_WORKERCONC, id, ask) end
end

-- The lease deadline of a job claimed or dispatched in this call: formatted once per call, not per job (a
-- `%.17g` format is ~5,000 Redis instructions, a tenth of a dispatched job's commands).
local leaseUntil
local function leaseDeadline()
  leaseUntil = leaseUntil or fmt(now + LEASE_MS)
  return leaseUntil
end

--- @include "fair-claim"

-- The common claim and release answer here, before the ~60 functions below are created: their creation alone
-- cost ~15 us of Redis time per call (measured with EVALSHA: a claim of a job without a slot 23-27 us, the same
-- script cut off before those functions 6.6 us), more than such a call's own commands. Common: no charge
-- corrections handed over (ARGV[13] = 0 for a claim, ARGV[6] = 0 for a release), releases done early (see
-- releaseSlots), no org's capped lanes to wake, and then nothing to dispatch: no refill due (the job does not run,
-- refill not asked, or BullMQ's wait list still holds jobs), the wait list lacking less than a batch, or nothing due
-- (no active lane, no due timer, sleeper or lease: a queue that is not backed up, whose jobs were dispatched when
-- enqueued), answered as dispatch answers it. Anything else goes on below with the work done so far in `early`:
-- the releases (`released`), the claim's own part (held, cancelled), what is due and the room read.
local early = nil
-- A claim handing nothing over (most claims under load: releases ride on one claim in a batch) answers before
-- even the few functions the others need.
-- A claim handing over no charge corrections (their count, ARGV[13]), read once for both paths below. Compared as
-- the string fair-lua.ts sends ('0'), not parsed: any other spelling of none only takes the long way, which applies
-- none the same.
local claimUncorrected = op == 'claim' and ARGV[13] == '0'
if claimUncorrected and #ARGV == 13 then
  local held, cancelled = claimOwn(ARGV[5])
  local runs = held == 1 and cancelled == 0
  -- The wait list first: under load it holds jobs, and that one read ends the refill. BullMQ's prioritized set only
  -- once the refill could dispatch anything.
  if not (runs and ARGV[7] == '1' and rcall('LLEN', Q_WAIT) == 0) then return claimReply(held, cancelled, 0) end
  -- No active lane and a wake-up armed (the wake key lives until its time): the refill finds nothing to dispatch
  -- unless a timer, sleeper or lease came due before that wake-up without anyone told (a lost kick), which the
  -- armed wake-up's dispatch, a release's sweep or the safety poll still catch. Neither those sets' first scores
  -- nor the prioritized set are read then: every claim of a throttled org's wake-up found its list empty and read
  -- them (6 commands, now 3). The active lanes and the wake key in one read (2 with a ZCARD and an EXISTS until
  -- 2026-12-07, each such claim of a throttled org's wake-up): EXISTS counts a key named twice twice, so its answer's
  -- odd part says the race holds a lane (a sorted set exists only while it holds a member), 2 or 3 a wake-up armed.
  local due, firsts
  local seen = rcall('EXISTS', K_LANES, K_WAKE, K_WAKE)
  if seen % 2 == 1 then
    if rcall('ZCARD', Q_PRIO) > 0 then return claimReply(held, cancelled, 0) end
    due = { true, true, true }
  elseif seen == 2 then
    return claimReply(held, cancelled, { {}, '0', now, 0, {} })
  elseif rcall('ZCARD', Q_PRIO) > 0 then
    return claimReply(held, cancelled, 0)
  else
    due, firsts = dueNow('idle')
    if not due then return claimReply(held, cancelled, { {}, nextWake(firsts, true), now, 0, {} }) end
  end
  early = { held = held, cancelled = cancelled, due = due }
end

--- @include "fair-buffer"

-- Releases handed over without charge corrections are done here; the call answers unless it must dispatch or wake
-- an org's capped lanes, and hands what it did on in `early` otherwise.
if claimUncorrected and #ARGV > 13 then
  early = { released = releaseSlots(14) }
  if not early.released.anyCapped then
    local held, cancelled = claimOwn(ARGV[5])
    -- As the handed path below: the room first, the sweeps only when the list lacks a batch.
    local room = bufferRoom()
    local due = room > 0 and dueNow()
    if not due then return claimReply(held, cancelled, 0) end
    early.held, early.cancelled, early.room, early.due = held, cancelled, room, due
  end
elseif op == 'release' and ARGV[6] == '0' then
  early = { released = releaseSlots(7) }
  if not early.released.anyCapped then
    local freed, due = early.released.freed, dueNow(ARGV[5] == '2' and 'lanes' or nil)
    if not due then return { freed, 0 } end
    if ARGV[5] == '0' then return { freed, 1 } end
    early.due = due
  end
end

-- The release that answered above without the clock goes on: the time now (see the script's first lines).
if not now then
  local t = rcall('TIME')
  nowF = t[1] * 1000 + t[2] / 1000
  now = math.floor(nowF)
end

-- The long way (every call the early answers above did not answer) runs in longWay, a function of its own, not in
-- the main chunk: the ~65 functions it creates (the later parts' below) are its closures. A function binds its
-- upvalues when it is created, and Lua 5.1 finds one that is a local of the creating function by walking that
-- function's open upvalues from the newest local down: the main chunk's (rcall, now, the keys, the parts above) were
-- ~100 deep by the time the lanes' and dispatch's functions were created, so most bindings walked most of them
-- (callgrind: ~120k Redis instructions of a dispatching claim's ~730k). longWay binds each main-chunk local it uses
-- once, and its closures copy them from it. Measured with callgrind (Redis's instructions in the script call alone,
-- before -> after): a dispatching claim ~728k -> ~659k, an add of one job ~549k -> ~461k, an idle dispatch ~336k ->
-- ~277k; a claim or release answered above is unchanged, and one whose charge corrections are applied below and
-- which answers before the lanes pays longWay's creation, ~+11.5k (~277k -> ~288k). longWay's upvalues are the
-- main-chunk locals it uses (43 of the 52 defined above; Lua 5.1 allows a function 60, and 200 locals): a local only
-- the long way uses belongs below.
local function longWay()
-- The configuration only the long way reads (ARGV[4], see the header): one argument, not nine. SWEEP_ARG is the
-- sweep bound as sent, for the sweeps' LIMIT (a Lua number handed to redis.call is formatted, see nowArg).
local DEF, PARK_SCORE, PARK_ARG, MAX_BATCH, SWEEP_MAX, SWEEP_ARG, LEASED
do
  local w, conc, rpmPro, rpmFlash, tpm, park, batch, sweep, leased = string.match(ARGV[4], '^(%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+)$')
  if not leased then return redis.error_reply('fair: bad configuration argument ' .. tostring(ARGV[4])) end
  DEF = { weight = tonumber(w), conc = tonumber(conc), rpmPro = tonumber(rpmPro), rpmFlash = tonumber(rpmFlash), tpm = tonumber(tpm) }
  PARK_ARG, PARK_SCORE, MAX_BATCH, SWEEP_ARG, SWEEP_MAX, LEASED = park, tonumber(park), tonumber(batch), sweep, tonumber(sweep), leased == '1'
end

-- A caller's delay (ms from now) as a Redis-clock time: a worker's or producer's own clock may be off Redis's, and
-- an absolute time from it moved a backoff, a model block or a delayed job's start by the skew (a clock 60 s behind
-- dropped a 20 s block). A value over a year is already an absolute time, as processes before 2026-12-06 sent (a
-- rolling upgrade's older worker or producer).
-- YEAR_MS is the function's own local: the script's main function was at Lua's 200 locals (before longWay).
local function fromNow(ms)
  local YEAR_MS = 365 * 86400000
  if ms > YEAR_MS then return ms end
  return now + ms
end

-- The rest of the keys (see the header).
local K_SLEEPWHY, K_OTIMERS, K_VT, K_GVT, K_SEQ = FP .. 'sleepwhy', FP .. 'otimers', FP .. 'vt', FP .. 'gvt', FP .. 'seq'
local K_MBLOCK, K_MBLOCKWHY, K_MLIMITS = FP .. 'mblock', FP .. 'mblockwhy', FP .. 'mlimits'
local K_THROTTLED, K_SLEEPSTART, K_LEASEREQ = FP .. 'throttled', FP .. 'sleepstart', FP .. 'leasereq'
local P_LANE, P_OLANES, P_PLAN, P_LEASEWAIT = FP .. 'lane:', FP .. 'olanes:', FP .. 'plan:', FP .. 'leasewait:'
local P_TB_RPM_ORG, P_TB_TPM_ORG, P_TB_RPM_MODEL, P_TB_TPM_MODEL = TB .. 'rpm:org:', TB .. 'tpm:org:', TB .. 'rpm:model:', TB .. 'tpm:model:'
local P_ORGJOBS = AP .. 'org-jobs:'
local P_IDEM, P_CANCELLED = AP .. 'idem:', AP .. 'cancelled:'
local Q_DELAYED, Q_META, Q_ACTIVE, Q_PC, Q_EVENTS, Q_MARKER = QK .. 'delayed', QK .. 'meta', QK .. 'active', QK .. 'pc', QK .. 'events', QK .. 'marker'

-- Every key, in fair-keys.ts FAIR_KEY_NAMES order: what its test compares with the names TypeScript builds.
if op == 'keys' then
  return { K_LANES, K_SLEEP, K_SLEEPWHY, K_TIMERS, K_OTIMERS, K_LEASES, K_INFLIGHT, K_VT, K_GVT, K_SEQ, K_MBLOCK,
    K_MBLOCKWHY, K_MLIMITS, P_JOB, P_LANE, P_OLANES, P_CAPBLK, P_PLAN, P_TB_RPM_ORG, P_TB_TPM_ORG, P_TB_RPM_MODEL,
    P_TB_TPM_MODEL, Q_WAIT, Q_PRIO, Q_DELAYED, Q_JOB, K_WORKERS, K_WORKERCONC, K_THROTTLED, K_SLEEPSTART, K_WAKE,
    P_CANCEL, P_ORGJOBS, Q_META, Q_ACTIVE, Q_PC, Q_EVENTS, Q_MARKER, K_LEASEREQ, P_LEASEWAIT, P_IDEM, P_CANCELLED }
end

--- @include "fair-corrections"

-- A claim or release handing over charge corrections applies them here and, unless a refund wakes a lane asleep on
-- its bucket, goes on as one without (above): the releases done, the claim's own part, and an answer unless capped
-- lanes wake or a dispatch is due, `early` carrying the work done on to the long way otherwise. Only a claim that
-- also hands releases over (the usual: the worker's corrections ride with its releases) or a release; the others,
-- and those whose refunds wake lanes (`corrected.wakes`), take the long way with the corrections applied.
local corrected = nil
if (op == 'claim' and not claimUncorrected) or (op == 'release' and ARGV[6] ~= '0') then
  local from, wakes = applyCorrections(op == 'claim' and 13 or 6)
  corrected = { from = from, wakes = wakes }
  if wakes then
    -- The long way (below).
  elseif op == 'release' then
    early = { released = releaseSlots(from) }
    if not early.released.anyCapped then
      local freed, due = early.released.freed, dueNow(ARGV[5] == '2' and 'lanes' or nil)
      if not due then return { freed, 0 } end
      if ARGV[5] == '0' then return { freed, 1 } end
      early.due = due
    end
  elseif #ARGV >= from then
    early = { released = releaseSlots(from) }
    if not early.released.anyCapped then
      local held, cancelled = claimOwn(ARGV[5])
      local room = bufferRoom()
      local due = room > 0 and dueNow()
      if not due then return claimReply(held, cancelled, 0) end
      early.held, early.cancelled, early.room, early.due = held, cancelled, room, due
    end
  end
end

--- @include "fair-lanes"

--- @include "fair-buckets"
--- @include "fair-try-lane"

--- @include "fair-dispatch"

-- A dispatch, and a claim or release that went the early way (`early`: the refill, and a release's fill of the slots
-- it freed; its charge corrections, if any, applied above) answer here, before the parts only the other ops use
-- (refunds, cancels, the parked store) are created: ~15 functions whose creation cost the refill ~35k Redis instructions.
if op == 'dispatch' then
  if ARGV[5] and ARGV[5] ~= '' then
    -- A renewal ('=<ask>', as a claim's: see there) writes the ask only when the worker was not registered.
    local renewal = string.sub(ARGV[6], 1, 1) == '='
    if rcall('ZADD', K_WORKERS, now + tonumber(ARGV[7]), ARGV[5]) == 1 or not renewal then
      rcall('HSET', K_WORKERCONC, ARGV[5], renewal and string.sub(ARGV[6], 2) or ARGV[6])
    end
  end
  return dispatch()
elseif op == 'claim' and early then
  -- Released above (`early.released`) when the claim handed slots over: capped lanes are woken here.
  if early.released then wakeReleased(early.released) end
  -- The claim's own part, done above unless the releases woke capped lanes first.
  local held, cancelled = early.held, early.cancelled
  if not held then held, cancelled = claimOwn(ARGV[5]) end
  -- Handed releases (the ids after the corrections, none here: ARGV[13] = 0): as release with dispatch, freed
  -- slots are filled now when anything is due and the wait list lacks enough for a batch (bufferRoom).
  -- Refill (ARGV[7] = '1'): the job just took the last one from BullMQ's wait list, so the next one is
  -- dispatched now, while this one runs, and is there when it finishes (BullMQ's moveToFinished then fetches
  -- it in the same call). Dispatching only on release would leave the list empty at every finish at low
  -- load: a blocking marker wait and a second fetch per job. Only when the list is empty (the early check found
  -- nothing queued, in this same call): a list that still holds jobs is refilled by the releases, in batches, at
  -- one dispatch's fixed cost per batch, not per job.
  local d = 0
  if #ARGV >= 14 then
    -- The room first: while the list lacks less than a batch, the sweeps wait for the next dispatch too.
    local room, due = early.room, early.due
    if not room then
      room = bufferRoom()
      due = room > 0 and dueNow()
    end
    if due then d = dispatch(nil, due, room) end
  elseif held == 1 and cancelled == 0 and ARGV[7] == '1' then
    local room = bufferTarget()
    if room and room > 0 then d = dispatch(nil, early.due, room) end
  end
  return claimReply(held, cancelled, d)
elseif op == 'release' and early then
  -- Released above (no corrections), here to wake capped lanes or to dispatch what it found due. Whether a dispatch
  -- now could do anything: skipped otherwise (a throttled org's finished job would only find its lane asleep; the
  -- armed wake-up or the safety poll comes back for it). With ARGV[5] = '1' the dispatch runs here, in the
  -- release's round trip.
  local freed = wakeReleased(early.released)
  local due = early.due or dueNow(ARGV[5] == '2' and 'lanes' or nil)
  if not due then return { freed, 0 } end
  if ARGV[5] ~= '0' then return { freed, 1, dispatch(nil, due) } end
  return { freed, 1 }
end

--- @include "fair-release"

--- @include "fair-store-parked"

if op == 'enqueue' or op == 'add' then
  local skipped = {}
  local limitsStored = {}
  -- `add` carries each job's BullMQ fields and idempotency record too and stores the new ones, parked, before
  -- laning them.
  local stride = op == 'add' and 18 or 10
  -- One INCRBY for the whole call's sequence numbers (a job already known or skipped leaves a gap: they only order).
  local jobs = math.floor((#ARGV - 5) / stride)
  -- The delayed scores of the jobs stored here: known, not read back below.
  -- `gone`: idempotent jobs whose key's record outlived the job (removed by retention): answered, never made again.
  local fresh, gone = {}, {}
  if op == 'add' then fresh, gone = storeParked(6, stride, jobs) end
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
    local i = 6 + (k - 1) * stride
    local id, org, model = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    -- The org's job index (GET /v1/jobs), in this call instead of a round trip of its own; NX keeps the first
    -- enqueue time of an idempotent re-enqueue. Whatever the lane decides below: the BullMQ job exists.
    if ARGV[i + 9] ~= '' and not gone[id] then addMember(index, org, ARGV[i + 9], id) end
    local known = gone[id] or rcall('EXISTS', P_JOB .. id) == 1
    local score = not known and (fresh[id] or tonumber(rcall('ZSCORE', Q_DELAYED, id)))
    if known then
      -- Already known (an earlier call, or earlier in this one): enqueue is idempotent by job id. Or gone: its
      -- idempotency record stands for a job retention removed, which is not made nor laned again.
    elseif not score or score < PARK_SCORE then
      -- Only parked BullMQ jobs may enter a lane; anything else would be run twice or never.
      skipped[#skipped + 1] = id
    else
      seq = seq + 1
      -- A delay, not the producer's time: a producer whose clock is off Redis's moved a delayed job's start.
      local notBefore = fromNow(tonumber(ARGV[i + 7]))
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
  -- `add` also answers how many jobs it stored (7th): the others existed (an idempotent re-send), and the
  -- producer gives back what admission reserved for them against the org's daily job limit.
  local stored = 0
  for _ in pairs(fresh) do stored = stored + 1 end
  local r = ARGV[5] == '1' and dispatch(skipped) or { {}, '0', now, 0, skipped }
  if op == 'add' then
    r[6] = r[6] or {}
    r[7] = stored
  end
  return r
elseif op == 'release' then
  -- With charge corrections whose refunds wake lanes (applied above, `corrected`): those lanes first, as there.
  for _, w in ipairs(corrected.wakes or {}) do wakeRefunded(w[1], w[2]) end
  local freed = releaseFrom(corrected.from)
  local due = dueNow(ARGV[5] == '2' and 'lanes' or nil)
  if not due then return { freed, 0 } end
  if ARGV[5] ~= '0' then return { freed, 1, dispatch(nil, due) } end
  return { freed, 1 }
elseif op == 'repark' then
  local id, notBefore, attempt = ARGV[5], fromNow(tonumber(ARGV[6])), ARGV[8]
  local m = jobMeta(id)
  local org, model = m[1], m[2]
  if not org then return 0 end
  -- Only a parked job, and only the caller's own: a repark comes a round trip or more after the park it follows,
  -- and meanwhile the job may have been sent again (the lease sweep took a silent worker for dead, see
  -- sweepLeases), fetched, run or finished. Freeing the slot of that later dispatch let the org's next job run
  -- over its cap while this one still ran, and its timer brought the finished job back to its lane. An attempt's
  -- repark (the gate's retry or deferral) names the attempt (BullMQ's `ats`, counted by each fetch): a later
  -- attempt's job, parked again, is not its to move. One naming none (the batch tier's wake) moves only a job
  -- that waits, in its lane or on its timer: never the slot of an attempt between its park and its own repark.
  local score = tonumber(rcall('ZSCORE', Q_DELAYED, id))
  if not score or score < PARK_SCORE then return 0 end
  if attempt and attempt ~= '' then
    if (rcall('HGET', Q_JOB .. id, 'ats') or '0') ~= attempt then return 0 end
  elseif m[5] ~= 'lane' and m[5] ~= 'timer' then
    return 0
  end
  freeSlot(id, org)
  if m[5] == 'lane' then removeFromLane(id, org, model) end
  if notBefore > now then
    addTimer(id, org, notBefore, ARGV[7])
  else
    removeTimer(id, org)
    pushJob(id, org, model, tonumber(m[3]), tonumber(m[4]))
  end
  return 1
elseif op == 'promote' then
  -- An operator's promote (Bull Board's, BullMQ's meaning: run it now, not at its delay's end). A job the dispatcher
  -- holds on a timer (its own delayMs, a retry's backoff, a run-time deferral) is due now: laned as its timer would
  -- lane it, and this call dispatches, so it goes at once when its org's fair share, concurrency cap and rate limits
  -- allow, and waits in its lane for them otherwise (never sent past them). BullMQ's own promote moved the parked job
  -- to its wait list instead: the worker that fetched it found no slot, its fair gate parked it again, and the
  -- dispatcher, which still held its timer, sent it at the delay's end. A job in its lane or dispatched is due already.
  -- Many ids (the board's promote-all: a shard's timers, sent in bounded calls by FairScheduler.promoteAll, which
  -- dispatches once after the last, so every org's jobs are laned before any is chosen): each as one.
  local stages, made = {}, false
  for i = 6, #ARGV do
    local id = ARGV[i]
    local m = jobMeta(id)
    local st = m[1] and m[5] or ''
    if st == 'timer' then
      timerDue(id, m)
      made = true
    end
    stages[#stages + 1] = st
  end
  return { stages, (made and ARGV[5] == '1') and dispatch() or 0 }
elseif op == 'cancel' then
  -- Each job as cancelJob decides it (includes/fair-release.lua), all in this one call. ARGV[5] = '1': the jobs one
  -- removal is about to take together (a parent's children, which BullMQ's remove of the parent takes all or none):
  -- when a worker holds (locks) any of them, BullMQ refuses that removal, so none is touched here either. Taken
  -- first, the others' lanes and slots would be gone while their jobs stay (an orphan sweep later, or a fetch that
  -- finds no slot and parks the job again).
  -- Only the job the caller read (its creation time): between the caller's read and this call that job may have
  -- been removed and a new one made under its id (an idempotency key sent again once its record lapsed, a parent's
  -- child replaced); the record here is then the new job's, whose lane, timer or slot and charge are not the
  -- cancel's to take (until 2026-12-07 they were: the new job stayed in BullMQ, out of its lane, until the orphan
  -- sweep). No job under the id: the one read is gone, and what is left of it is `removed`'s (or tryLane's) to drop.
  local function isRead(i)
    local ts = ARGV[i + 1]
    return ts == '' or rcall('HGET', Q_JOB .. ARGV[i], 'timestamp') == ts
  end
  if ARGV[5] == '1' then
    -- A new job under a child's id is no job of the removal: its lock does not stop the others being taken.
    for i = 6, #ARGV, 2 do
      if isRead(i) and rcall('EXISTS', Q_JOB .. ARGV[i] .. ':lock') == 1 then return { 0, 0 } end
    end
  end
  local taken, leaving, woke = 0, 0, false
  for i = 6, #ARGV, 2 do
    if isRead(i) then
      local done, slot, wakes = cancelJob(ARGV[i])
      if done then taken = taken + 1 end
      if slot then leaving = leaving + 1 end
      woke = woke or wakes
    end
  end
  -- Capacity given back (a slot: the org's capped lanes woke, freeSlot; the charge refunded: lanes asleep on those
  -- buckets woke, wakeRefunded; a sleeping lane's head taken out) is used in this call, as a release's is: the
  -- dispatch runs here. Asked of the workers' loops instead (a kick, until 2026-12-06), it raced the caller's
  -- removal that follows: a dispatch that came first found the cancelled jobs still filling BullMQ's wait list (a
  -- worker's ask of one job, say), promoted nothing, and nothing came again until the loops' safety poll. Here
  -- the jobs given back count as gone from the list (`leaving`): the caller removes them next.
  if not woke then return { taken, 0 } end
  local due = dueNow()
  if not due then return { taken, 0 } end
  return { taken, 1, dispatch(nil, due, bufferRoom(leaving)) }
elseif op == 'removed' then
  -- Jobs removed in BullMQ alone (Bull Board's remove, clean, empty, obliterate; a parent's removal takes its
  -- children): each one whose BullMQ job is gone leaves its lane or timer, or gives its slot back now instead of
  -- at the lease sweep, and is forgotten. A job that exists again (its id enqueued anew) is not touched.
  -- ARGV[5] = '1': the removal itself took them from BullMQ's wait list or prioritized set (BullMQ's clean of
  -- those), so no worker holds them: what their dispatch charged goes back too, unless a worker's claim took it (a
  -- stalled job back in the wait list: refundDispatch). Otherwise the charge stays:
  -- a job that ran (a stalled one cleaned from active, one whose release is still on its way) may have
  -- called the model, and its worker gives back what it did not spend.
  local refund = ARGV[5] == '1'
  local freed, forgotten = 0, 0
  -- A freed slot (and the charge given back with it) is used in this call, as a cancel's and a release's are: the
  -- org's next job goes now. Asked of the workers' loops instead (a kick, until 2026-12-06), it waited for a message
  -- that can be lost (then for their safety poll). The jobs are gone from BullMQ already: the wait list's room is
  -- read as it is.
  for i = 6, #ARGV do
    local id = ARGV[i]
    if rcall('EXISTS', Q_JOB .. id) == 0 then
      local m = jobMeta(id)
      local org, model, st = m[1], m[2], m[5]
      if org then
        if st == 'lane' then
          removeFromLane(id, org, model)
        elseif st == 'timer' then
          removeTimer(id, org)
        elseif freeSlot(id, org) then
          freed = freed + 1
          if refund then refundDispatch(id, org, model) end
        end
        rcall('DEL', P_JOB .. id)
        forgotten = forgotten + 1
      end
    end
  end
  if freed == 0 then return { freed, forgotten } end
  local due = dueNow()
  if not due then return { freed, forgotten } end
  return { freed, forgotten, dispatch(nil, due) }
elseif op == 'claim' then
  -- With charge corrections (without, it answered above: see there for the refill and the handed releases).
  local id = ARGV[5]
  -- Releases handed over (the ids after the corrections): the worker's jobs that finished just before this one
  -- started. At one job after another that is every release, and it costs no round trip of its own here.
  -- Applied above (`corrected`); the lanes their refunds wake, first.
  local from = corrected.from
  for _, w in ipairs(corrected.wakes or {}) do wakeRefunded(w[1], w[2]) end
  local handed = #ARGV >= from
  if handed then releaseFrom(from) end
  local held, cancelled = claimOwn(id)
  local d = 0
  if handed then
    local room = bufferRoom()
    local due = room > 0 and dueNow()
    if due then d = dispatch(nil, due, room) end
  elseif held == 1 and cancelled == 0 and ARGV[7] == '1' then
    local room = roomIfEmpty()
    if room and room > 0 then d = dispatch(nil, nil, room) end
  end
  return claimReply(held, cancelled, d)
elseif op == 'orphans' then
  -- Parked jobs the dispatcher does not know (a producer died between the BullMQ add and the lane): the
  -- caller lanes them again. Pages by rank among parked jobs (their scores repeat: BullMQ's counter wraps).
  local base = rcall('ZCOUNT', Q_DELAYED, '-inf', '(' .. PARK_ARG)
  local from = base + tonumber(ARGV[5])
  local page = rcall('ZRANGE', Q_DELAYED, from, from + tonumber(ARGV[6]) - 1)
  local out = {}
  for _, id in ipairs(page) do
    if rcall('EXISTS', P_JOB .. id) == 0 then out[#out + 1] = id end
  end
  return { out, #page }
elseif op == 'plan' or op == 'wake' then
  local org = ARGV[5]
  if op == 'plan' then
    local fields = { 'weight', 'concurrency', 'rpmPro', 'rpmFlash', 'tpm' }
    for k, f in ipairs(fields) do
      local v = ARGV[5 + k]
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
  -- no room until ARGV[8], so the lanes sleep until then and the next lease is asked for then.
  local model, requests, tokens, retryAt = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
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
        firstSeen[K_SLEEP] = nil
      end
    elseif not granted then
      rcall('SREM', waiting, l)
    end
  end
  if granted then return dispatch() end
  return { {}, nextWake(), now, 0, {} }
elseif op == 'take' then
  -- A worker's call no dispatch charged (a fallback model, a retry within its route): its request is taken from the
  -- org's RPM bucket for the model at the capacity and rate a dispatch takes it at (orgRpmOf: the org's plan, the
  -- model's per-org rpm, the tier's default), here rather than by the worker's own limiter, whose MODEL_LIMITS caps
  -- ignore the plan and whose writes would refill the shared bucket at its own rate. The caller's other buckets
  -- (the model's, under the same prefix) go in the same call: all or none, as token-bucket-take-N.lua answers.
  local org, model, cost = ARGV[5], ARGV[6], tonumber(ARGV[8])
  local cap = orgRpmOf(plan(org), modelInfo(model), model, tonumber(ARGV[7]))
  local orgName = 'rpm:org:' .. org .. ':' .. model
  local orgKey = P_TB_RPM_ORG .. org .. ':' .. model
  if cost < 0 then
    -- Given back (the call was refused before it was sent): to the org's bucket alone, at the same capacity and
    -- rate; the org's lanes asleep on it get a look at the next dispatch, as after a dispatch's refund.
    if adjustBucket(orgKey, cap, cost, false) then wakeRefunded(org, { [orgKey] = true }) end
    return 1
  end
  -- {key, capacity, rate per ms, cost, name}; an org without an RPM limit has no bucket to take from.
  local takes = {}
  if cap and cap > 0 then takes[1] = { orgKey, cap, cap / 60000, cost, orgName } end
  for i = 9, #ARGV, 4 do
    local name = ARGV[i]
    -- A leased shard's model buckets are its reservoirs: a call takes from the models' global buckets instead.
    local prefix = string.sub(name, 1, 10)
    if LEASED and (prefix == 'rpm:model:' or prefix == 'tpm:model:') then
      return redis.error_reply('fair take: ' .. name .. ' is a reservoir of this shard, not a bucket')
    end
    takes[#takes + 1] = { TB .. name, tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), name }
  end
  local wait, limiting = 0, nil
  for _, b in ipairs(takes) do
    local lv = level(b[1], b[2], b[3])
    -- A cost above capacity is admitted on a full bucket and leaves a debt (as token-bucket-take does).
    local need = math.min(b[4], b[2])
    if lv < need then
      local w = math.ceil((need - lv) / b[3])
      if w > wait then wait, limiting = w, b[5] end
    end
    b[6] = lv
  end
  if limiting then return { 0, wait, limiting, now } end
  for _, b in ipairs(takes) do chargeBucket(b[1], b[2], b[3], b[6] - b[4]) end
  flushBuckets()
  return { 1, 0, '', now }
elseif op == 'block' then
  -- The later of the standing block and this one, with its reason: a per-day quota spent (provider_quota, until
  -- the reset) is not cut short by a per-minute 429 or an open breaker of a call that was already in flight, and
  -- a delay of 0 or less (or an older worker's absolute until already past) never lifts a block that stands: it
  -- lapses at its own time. Before, the last block won (the quota's block became 20 s) and a past until deleted it.
  local model, untilMs = ARGV[5], fromNow(tonumber(ARGV[6]))
  local standing = tonumber(rcall('HGET', K_MBLOCK, model)) or 0
  if untilMs > now and untilMs > standing then
    rcall('HSET', K_MBLOCK, model, fmt(untilMs))
    rcall('HSET', K_MBLOCKWHY, model, ARGV[7])
  elseif standing > 0 and standing <= now then
    -- A block that has lapsed is only tidied away.
    rcall('HDEL', K_MBLOCK, model)
    rcall('HDEL', K_MBLOCKWHY, model)
  end
  return 1
end
return redis.error_reply('unknown fair op ' .. tostring(op))
end -- longWay

return longWay()
