-- Part of fair-core-N.lua, pasted where it says `--- @include "fair-corrections"` (lua.ts readLua): the charge
-- corrections a claim or release hands over (correctCharge) and what they read: the orgs' plans, the models' limits,
-- the token buckets. Before the lanes, the dispatch and the releases' other parts (fair-lanes, fair-buckets,
-- fair-try-lane, fair-dispatch, fair-release): a claim or release with corrections whose refunds wake no lane
-- answers without creating those (~60 functions, ~240k Redis instructions a call, measured with callgrind, more
-- than the call's own commands; a quarter of the claims of cache hits at concurrency 1 carry corrections, two in
-- five of misses'). Those parts use what is defined here.
-- Uses the locals the script defines before that line (rcall, now, the keys, DEF, and the parts included earlier).

-- Lane id is "<org>|<model>" (splitLane, fair-lanes).
local function laneOf(org, model) return org .. '|' .. model end

-- `read(key)` once per script call: the memoised function and its table (a caller that changes what was
-- read forgets the key there). Each value is a table, never nil. (A count read once and then added to, whose
-- table a flush replaces, is `hashNumberOnce` in fair-buckets.)
local function readOnce(read)
  local cache = {}
  return function(key)
    local v = cache[key]
    if v == nil then
      v = read(key)
      cache[key] = v
    end
    return v
  end, cache
end

-- An org's plan (weight, cap, its own limits over the defaults), read once per script call.
local plan = readOnce(function(org)
  local h = rcall('HMGET', P_PLAN .. org, 'weight', 'concurrency', 'rpmPro', 'rpmFlash', 'tpm')
  local p = { weight = tonumber(h[1]) or DEF.weight, conc = tonumber(h[2]) or DEF.conc, ownRpmPro = tonumber(h[3]), ownRpmFlash = tonumber(h[4]),
    rpmPro = tonumber(h[3]) or DEF.rpmPro, rpmFlash = tonumber(h[4]) or DEF.rpmFlash, tpm = tonumber(h[5]) or DEF.tpm }
  if not (p.weight > 0) then p.weight = DEF.weight end
  return p
end)

-- A model's stored limits (raw strings; false = unset), read once per script call: enqueue compares them with
-- the producer's before writing, and the dispatch that follows reads them from here.
local storedLimits = readOnce(function(model)
  return rcall('HMGET', K_MLIMITS, 'orgrpm:' .. model, 'rpm:' .. model, 'tpm:' .. model)
end)

-- A model's stored limits, read once per script call (dispatch tries many lanes of one model); its block
-- (`blockedUntil`) is added by the first lane that tries the model (tryLane): a charge correction or an org's
-- request taken reads the limits alone (the block's HGET was one of a throttled org's release corrections' four
-- commands until 2026-12-07). `modelCache`: enqueue forgets a model whose limits it changed.
local modelInfo, modelCache = readOnce(function(model)
  local h = storedLimits(model)
  return { orgRpm = tonumber(h[1]), rpm = tonumber(h[2]) or 0, tpm = tonumber(h[3]) or 0 }
end)

-- An org's lanes, read once per call until this call adds or drops one of them.
local orgLanes, olanesCache = readOnce(function(org) return rcall('SMEMBERS', P_OLANES .. org) end)

-- Bucket levels this call read or charged (key -> level at nowF), and the charged ones not written yet (key ->
-- {cap, rate}): a dispatch of k jobs of one lane reads each of its buckets once and writes it once, not k
-- times. Written by flushBuckets before the dispatch returns.
local bucketLevels, bucketsDirty = {}, {}

-- The buckets' write time, formatted once per call for all of them (a number format costs a few us of Redis time).
local bucketStamp
-- Writes a bucket this call charged (one HSET and PEXPIRE); nothing when it charged none.
local function writeBucket(key)
  local b = bucketsDirty[key]
  if not b then return end
  local lv = bucketLevels[key]
  bucketStamp = bucketStamp or string.format('%.3f', nowF)
  -- A whole level (a full bucket less a whole charge, the unthrottled case) goes as `%d` (fmt).
  rcall('HSET', key, 'tokens', fmt(lv), 'ts', bucketStamp)
  -- An integer formatted here (`%d`), not by redis.call's `%.17g` of a Lua number: a fraction of its cost.
  rcall('PEXPIRE', key, string.format('%d', math.ceil((b[1] - lv) / b[2]) + 1000))
  bucketsDirty[key] = nil
end

-- A reservoir's level (leased mode): what the shard holds of the model's global bucket; missing = nothing.
local function reservoirLevel(key)
  return tonumber(rcall('HGET', key, 'tokens')) or 0
end

local function setReservoir(key, lv)
  rcall('HSET', key, 'tokens', fmt(lv))
  rcall('PEXPIRE', key, RESERVOIR_TTL_MS)
end

-- The org's per-model RPM: the org's own plan wins, then the model's configured per-org rpm (as the producers
-- stored it; else `configured`, the caller's configuration: a worker's fallback model may never have been enqueued,
-- so no producer stored its limits), then the default for the model's tier. The one resolution for every take of
-- the org's RPM bucket: a dispatch, a correction, and a worker's call no dispatch charged (op take).
-- The tier: "pro" anywhere in the name, in any case (`gemini-2.5-Pro` too), as the TS rule (model-limits.ts
-- isProModel): case-sensitive here, such a model got pro model limits from the producers and the flash org RPM.
local function orgRpmOf(p, mi, model, configured)
  local pro = string.find(string.lower(model), 'pro', 1, true) ~= nil
  local r
  if pro then r = p.ownRpmPro else r = p.ownRpmFlash end
  if r == nil then r = mi.orgRpm end
  if r == nil then r = configured end
  if r == nil then
    if pro then r = p.rpmPro else r = p.rpmFlash end
  end
  return r
end

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

-- The corrections themselves (and the bucket adjustment they and op take make), created only for the calls that
-- use them: a claim or release carrying corrections, and the ops that go on past the early answers (take, cancel and
-- removed refund a dispatch's charge). A dispatch, and a claim or release handing none over (`early`), never do: here,
-- before the lanes, each function would cost their every call its creation (binding its upvalues).
local adjustBucket, correctCharge, applyCorrections
if op ~= 'dispatch' and not early then
--- @include "token-bucket-adjust"

  -- True when it gave tokens back to a limited bucket (a lane may be asleep on it). A leased reservoir is
  -- corrected in place (clamped as a bucket: a debt the next lease pays first). A bucket already full took nothing
  -- back: no lane sleeps on it past its wake time (when it held what the lane waits for, at most its size), so
  -- none is looked for (the org's lanes and their sleep reasons, two commands a release of a throttled org's job).
  adjustBucket = function(key, cap, delta, reservoir)
    if delta == 0 or not cap or cap <= 0 then return false end
    if reservoir then
      setReservoir(key, math.max(-cap, math.min(cap, reservoirLevel(key) - delta)))
      return delta < 0
    end
    -- The include reads and writes the bucket itself: what this call charged is written first, and read again.
    writeBucket(key)
    bucketLevels[key] = nil
    local _, changed = tokenBucketAdjust(key, cap, cap / 60000, delta, nowF)
    return delta < 0 and changed
  end

  -- Corrects what was charged for calls of `org` to `model`: tokens to the org's and the model's TPM buckets
  -- (the dispatch charged the estimate), requests to the org's and the model's RPM buckets (-1 gives back the
  -- request a dispatch charged for a job that called no model: a cache hit, a job cancelled or refused before
  -- its call). Each only where that limit is set, corrected as the rate limiter corrects its own.
  -- Returns the buckets given tokens back (key -> true), or nil: the org's lanes asleep on them are the caller's to
  -- wake (wakeRefunded, in fair-release: its lane functions are created only on the long way).
  correctCharge = function(org, model, orgTokens, modelTokens, requests)
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
    if any then return refunded end
    return nil
  end

  -- Charge corrections handed over from ARGV[i] (see correctCharge): their count, then per entry org, model,
  -- org tokens, model tokens, requests. Returns the index of the first argument after them, and the refunds whose
  -- org has a lane asleep on a bucket given tokens back, in order ({org, refunded} each; nil when none): those lanes
  -- are woken on the long way (wakeRefunded). Waking them after all the entries rather than after each is the same:
  -- a wake (unsleep, activate) reads and writes no bucket, a correction no lane.
  applyCorrections = function(i)
    local n = tonumber(ARGV[i]) or 0
    local wakes = nil
    for k = 0, n - 1 do
      local j = i + 1 + k * 5
      local org = ARGV[j]
      local refunded = correctCharge(org, ARGV[j + 1], tonumber(ARGV[j + 2]), tonumber(ARGV[j + 3]), tonumber(ARGV[j + 4]))
      -- Whether one of the org's lanes sleeps on a bucket given tokens back: wakeRefunded's own test, and its reads
      -- (the org's lanes, read once per call; their sleep reasons). Inline: the main function was at Lua's 200
      -- locals (before longWay).
      local lanes = refunded and orgLanes(org) or {}
      if #lanes > 0 then
        for _, why in ipairs(rcall('HMGET', K_SLEEPWHY, unpack(lanes))) do
          if why and refunded[why] then
            wakes = wakes or {}
            wakes[#wakes + 1] = { org, refunded }
            break
          end
        end
      end
    end
    return i + 1 + n * 5, wakes
  end
end
