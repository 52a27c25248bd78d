-- Part of fair-core-N.lua, pasted where it says `--- @include "fair-try-lane"` (lua.ts readLua): one lane's head job tried against its org's share, slots and buckets.
-- Uses the locals the script defines before that line (rcall, now, the keys, and the parts included earlier).
-- The head of the lane a dispatch is trying, read once per dispatch (see dispatch): `ids` the lane's first jobs as
-- read, `pos` the next one to try, `taken` those dispatched but still in the lane's ZSET, removed in one ZREM by
-- flushHeads. Only tryLane reads it, and only flushHeads writes the lane from it. A lane the dispatch turns from
-- (its org's run ended: orgs of equal share take turns, one job each) is set aside in `saved`, not written and read
-- again: a dispatch of k jobs across orgs cost a ZRANGE and a ZREM per job. Nothing else in a dispatch's loop reads
-- a lane's jobs but bestLaneOf (dispatch flushes every lane first, flushAllHeads) and the emptied lane's check
-- (after its own flush, in tryLane). `gone`: jobs found removed from BullMQ and dropped in this dispatch (see tryLane).
-- `parked`: whether each job of `ids` sits in BullMQ's delayed set (id -> true | false), read in one ZMSCORE with
-- a head of 3 jobs or more read for a dispatch with room for 3 or more (headOf); nil otherwise (tryLane's ZREM
-- tells, one job at a time). `unparked`: the jobs the dispatch took out of the delayed set on that knowledge, removed
-- in one ZREM with the lanes' (flushAllHeads).
local function newHeads() return { lane = nil, ids = nil, pos = 1, taken = {}, want = 0, gone = 0, saved = {}, parked = nil, unparked = {} } end
local function flushHeads(h)
  if #h.taken > 0 then rcall('ZREM', P_LANE .. h.lane, unpack(h.taken)) end
  h.lane, h.ids, h.pos, h.taken, h.parked = nil, nil, 1, {}, nil
end
local function flushAllHeads(h)
  flushHeads(h)
  if #h.unparked > 0 then
    rcall('ZREM', Q_DELAYED, unpack(h.unparked))
    h.unparked = {}
  end
  for lane, s in pairs(h.saved) do
    if #s.taken > 0 then rcall('ZREM', P_LANE .. lane, unpack(s.taken)) end
  end
  h.saved = {}
end

-- The lane's next job to try and whether another follows it (true also when that is not known yet: the rest
-- was not read); nil when the lane holds none. `want`: how many to read when the lane is not read yet.
local function headOf(h, lane, want)
  if h.lane ~= lane then
    if h.lane then h.saved[h.lane] = { ids = h.ids, pos = h.pos, taken = h.taken, want = h.want, parked = h.parked } end
    local s = h.saved[lane]
    if s then
      h.saved[lane] = nil
      h.lane, h.ids, h.pos, h.taken, h.want, h.parked = lane, s.ids, s.pos, s.taken, s.want, s.parked
    else
      h.lane, h.ids, h.pos, h.taken, h.parked = nil, nil, 1, {}, nil
    end
  end
  if h.lane == nil or (h.ids[h.pos] == nil and #h.ids == h.want) then
    flushHeads(h)
    h.lane, h.want = lane, math.max(2, want)
    h.ids = rcall('ZRANGE', P_LANE .. lane, '0', h.want - 1)
    -- A head that may give 3 jobs or more (`want` is the room plus one; a throttled lane's wake-up sends a batch):
    -- whether each is parked is read in one ZMSCORE, and the jobs taken leave the delayed set in one ZREM, not one
    -- ZREM each (a 10-job wake-up: 2 commands, not 10). A smaller room (an unthrottled worker's refill takes one or
    -- two jobs) keeps the ZREM per job: the read would cost as much or a command more. Not a local of its own for
    -- the 3: the script's main function was at Lua's 200 locals (before longWay).
    if want >= 4 and #h.ids >= 3 then
      local scores = rcall('ZMSCORE', Q_DELAYED, unpack(h.ids))
      h.parked = {}
      for k, id in ipairs(h.ids) do h.parked[id] = scores[k] ~= false end
    end
  end
  local id = h.ids[h.pos]
  return id, h.ids[h.pos + 1] ~= nil or (id ~= nil and #h.ids == h.want)
end

-- What a lane asleep on a bucket waits for: `need`, or on its org's request rate (`batched`) the requests the
-- bucket refills in WAKE_BATCH.ms (WAKE_BATCH.deepMs when WAKE_BATCH.deepBacklogMs of them wait), at most its size
-- and the lane's backlog (its jobs not taken in this run).
local function wakeNeed(batched, need, cap, rate, lane, heads)
  if not batched then return need end
  local batch = math.min(cap, math.floor(rate * WAKE_BATCH.ms))
  if batch <= need then return need end
  -- tryLane read the lane's head into `heads` first: its taken jobs are this lane's, still in its ZSET.
  local backlog = rcall('ZCARD', P_LANE .. lane) - #heads.taken
  if backlog >= rate * WAKE_BATCH.deepBacklogMs then batch = math.min(cap, math.floor(rate * WAKE_BATCH.deepMs)) end
  return math.max(need, math.min(batch, backlog))
end

-- Tries to dispatch the head job of `lane`: returns its id, the org's virtual time after it, whether the lane
-- is still a candidate and whether the job was parked (taken out of BullMQ's delayed set here, for promoteParked);
-- or nil after parking the lane where it waits; or, 5th, true when this dispatch dropped SWEEP_MAX removed jobs and
-- stops (the lane left as it is, `more` for the caller). `deferVt`: the caller writes that virtual time (a run of
-- one lane, see dispatch), not this call. `heads` (newHeads): the lane's head as read for the run; `want`: how
-- many jobs the dispatch may still take.
local function tryLane(lane, org, model, v, deferVt, heads, want)
  -- A lane waits this long for a lease asked for (the caller's take from the global bucket and its lease op);
  -- when no lease comes (the caller died), the lane wakes and asks again. The function's own local: the script's
  -- main function was at Lua's 200 locals (before longWay).
  local LEASE_WAIT_MS = 2000
  -- Whether another job follows only tells whether the lane still holds one after the head leaves.
  local id, more = headOf(heads, lane, want + 1)
  if id == nil then
    flushHeads(heads)
    dropLaneIfEmpty(lane, org)
    return nil
  end
  local mi = modelInfo(model)
  -- The model's block, read once per call with its limits (modelInfo), by the first lane of the model tried.
  if mi.blockedUntil == nil then mi.blockedUntil = tonumber(rcall('HGET', K_MBLOCK, model)) or 0 end
  local blockedUntil = mi.blockedUntil
  if blockedUntil > now then
    sleepLane(lane, blockedUntil, 'model:' .. model)
    return nil
  end
  local p = plan(org)
  if p.conc > 0 and inflightOf(org) >= p.conc then
    rcall('ZREM', K_LANES, lane)
    firstSeen[K_LANES] = nil
    rcall('SADD', P_CAPBLK .. org, lane)
    capblkEmpty[org] = nil
    return nil
  end
  local est = tonumber(rcall('HGET', P_JOB .. id, 'e')) or 0
  -- All or nothing: check every bucket before charging any. `lvs[i]`: bucket i's level after this job's cost.
  local cands = laneCandidates(lane, org, model, p, mi)
  local lvs, wait, limiting = {}, 0, nil
  local short, reservoirShort = nil, false
  for i = 1, #cands do
    local c = cands[i]
    local cap, rate = c[2], c[3]
    local cost = c[4] and 1 or est
    -- A cost above capacity is admitted on a full bucket and leaves a debt (as token-bucket-take does).
    local need = cost < cap and cost or cap
    local lv
    if c[5] then
      lv = reservoirLevel(c[1])
      if lv < need then
        short = short or { model, 0, 0 }
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
        local w = math.ceil((wakeNeed(c[7], need, cap, rate, lane, heads) - lv) / rate)
        if w > wait then wait, limiting = w, c[1] end
      end
    end
    lvs[i] = lv - cost
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
  -- Promote's ZREM (promoteParked), done before anything is charged: a job removed behind the dispatcher's back
  -- (Bull Board's remove, clean or empty deletes the BullMQ job, not its lane entry nor its record here) leaves the
  -- lane and the record without a slot or a charge, which the lease sweep would only have given half back (the
  -- slot, FAIR_LEASE_MS later), and the lane's next job is tried. So does a job that finished meanwhile (run
  -- outside its lane, say promoted by hand): leased, it held a slot no worker would release, which an org at its
  -- cap waited for until the lease sweep. A dispatched job costs no command more; a removed or finished one the
  -- HMGET (its `timestamp`, which every BullMQ job has, and `finishedOn`) and the DEL. A job that exists, not
  -- finished, but is not parked (promoted by hand) is dispatched as before: its lease lets the fair gate run it.
  -- Known from the head's ZMSCORE (headOf): nothing in this call but its own ZREMs moves a job of it out of the delayed
  -- set, and each id is tried once; the ZREM then goes with the dispatch's others (flushAllHeads).
  local parked = heads.parked and heads.parked[id]
  if parked == nil then
    parked = rcall('ZREM', Q_DELAYED, id) == 1
  elseif parked then
    heads.unparked[#heads.unparked + 1] = id
  end
  local ended = false
  if not parked then
    local h = rcall('HMGET', Q_JOB .. id, 'timestamp', 'finishedOn')
    ended = not h[1] or h[2] ~= false
  end
  if ended then
    heads.taken[#heads.taken + 1] = id
    heads.pos = heads.pos + 1
    rcall('DEL', P_JOB .. id)
    heads.gone = heads.gone + 1
    -- Bounded like the sweeps: an emptied queue of 100k jobs is dropped over many calls, not in one.
    if heads.gone >= SWEEP_MAX then return nil, nil, nil, nil, true end
    return tryLane(lane, org, model, v, deferVt, heads, want)
  end
  for i = 1, #cands do
    local c = cands[i]
    if c[5] then
      setReservoir(c[1], lvs[i])
    else
      chargeBucket(c[1], c[2], c[3], lvs[i])
    end
  end
  -- Out of the lane: with the run's others, in one ZREM (flushHeads).
  heads.taken[#heads.taken + 1] = id
  heads.pos = heads.pos + 1
  leaseAdds[#leaseAdds + 1] = leaseDeadline()
  leaseAdds[#leaseAdds + 1] = id
  inflightAdded[org] = (inflightAdded[org] or 0) + 1
  -- A new charge, not claimed yet: an earlier attempt's claim stamp (a job reparked, then sent again) goes.
  rcall('HSET', P_JOB .. id, 'st', 'lease', 'c', '0')
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
  for i = 1, #cands do
    local c = cands[i]
    local need = math.min(1, c[2])
    -- (A reservoir does not refill: the lane's next try asks for a lease instead.)
    if c[4] and not c[5] and lvs[i] < need then
      local w = math.ceil((wakeNeed(c[7], need, c[2], c[3], lane, heads) - lvs[i]) / c[3])
      if w > nextWait then nextWait, nextLimit = w, c[1] end
    end
  end
  local emptied = false
  if not more then
    flushHeads(heads)
    emptied = dropLaneIfEmpty(lane, org)
  end
  if not emptied and nextLimit then sleepLane(lane, math.ceil(nowF + nextWait), nextLimit) end
  return id, nv, not emptied and not nextLimit, parked
end
