-- Part of fair-core-N.lua, pasted where it says `--- @include "fair-buckets"` (lua.ts readLua): the token buckets a dispatch charges (read and written once per call), the shard's reservoirs and lease
-- requests, an org's RPM and best lane, the dispatch's batched writes and a lane's bucket names.
-- Uses the locals the script defines before that line (rcall, now, the keys, and the parts included earlier).

-- Bucket level now, in the {tokens, ts} format of token-bucket-take-N.lua (missing = full). Parsed by arithmetic
-- (`s + 0`) as there, not tonumber (two strtod per string in Lua 5.1); a malformed value fails the call either way.
local function level(key, cap, rate)
  local lv = bucketLevels[key]
  if lv then return lv end
  local s = rcall('HMGET', key, 'tokens', 'ts')
  if not s[1] then lv = cap else lv = math.min(cap, s[1] + math.max(0, nowF - s[2]) * rate) end
  bucketLevels[key] = lv
  return lv
end

local function chargeBucket(key, cap, rate, lv)
  bucketLevels[key] = lv
  -- Kept from the run's earlier charge when the same: one table per bucket and call, not per job.
  local d = bucketsDirty[key]
  if not d or d[1] ~= cap or d[2] ~= rate then bucketsDirty[key] = { cap, rate } end
end


local function flushBuckets()
  for key in pairs(bucketsDirty) do writeBucket(key) end
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


-- The org's lane whose head job comes first (priority, then arrival), among its active lanes.
local function bestLaneOf(org, fallback)
  local members = orgLanes(org)
  if #members < 2 then return fallback end
  local best, bestScore = fallback, nil
  for _, l in ipairs(members) do
    if rcall('ZSCORE', K_LANES, l) then
      local h = rcall('ZRANGE', P_LANE .. l, '0', '0', 'WITHSCORES')
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
  if markerDue then rcall('ZADD', Q_MARKER, '0', '0') end
  leaseAdds, inflightAdded, inflightRead, waitPushes, markerDue = {}, {}, {}, {}, false
end


-- The buckets a lane's jobs are charged to, built once per call for the lane's plan and model limits (a run
-- dispatches many jobs of one lane; building them per job, with the org's RPM resolved by a string.lower of the
-- model, was a tenth of a dispatched job's Redis time): {key, capacity, refill per ms, request-count bucket (its
-- cost is 1, else the job's token estimate), leased reservoir (LEASED, ARGV[4]), where its shortfall is reported, the
-- org's own request rate (a backlogged lane sleeps on it for a batch, WAKE_BATCH)}, only those with a limit.
-- A batch lane (batch-tier jobs, fair-plan.ts BATCH_LANE_SUFFIX) is limited by no online bucket.
local laneCandidatesOf = {}
local function laneCandidates(lane, org, model, p, mi)
  local c = laneCandidatesOf[lane]
  -- Built from this plan and these limits (each read once per call, re-read only after enqueue changed them).
  if c and c.p == p and c.mi == mi then return c end
  c = { p = p, mi = mi }
  if string.sub(model, -#BATCH_LANE) ~= BATCH_LANE then
    local k = laneBucketKeys(lane, org, model)
    local all = {
      { k[1], orgRpmOf(p, mi, model), 0, true, false, nil, true },
      { k[2], p.tpm, 0, false, false },
      { k[3], mi.rpm, 0, true, LEASED, 2 },
      { k[4], mi.tpm, 0, false, LEASED, 3 },
    }
    for _, b in ipairs(all) do
      if b[2] and b[2] > 0 then
        b[3] = b[2] / 60000
        c[#c + 1] = b
      end
    end
  end
  laneCandidatesOf[lane] = c
  return c
end
