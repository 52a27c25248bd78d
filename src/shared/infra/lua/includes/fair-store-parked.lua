-- Part of fair-core-N.lua, pasted where it says `--- @include "fair-store-parked"` (lua.ts readLua): the enqueue
-- op `add` stores the BullMQ jobs it lanes, parked, in its own call. It replays what BullMQ's addDelayedJob-6.lua
-- (6.x: storeJob, getDelayedScore, addDelayedJob, addDelayMarkerIfNeeded, handleDuplicatedJob) does for a job
-- without parent, repeat or deduplication, which are the only jobs the producer adds this way; a parity test
-- (test/fair-store-parked.test.ts) compares every key it writes with BullMQ's own add. One script call for a
-- bulk request instead of a BullMQ script call per job: Redis spent ~60 us per job in addDelayedJob's, ~17 us
-- of it in its commands and the rest in its Lua work per call (msgpack arguments, JSON options, 25 helper
-- functions made again), twice the plain add's whole cost.
-- Uses the locals the script defines before that line (rcall, Q_JOB, Q_DELAYED, Q_META, Q_EVENTS, Q_MARKER, QK,
-- P_IDEM, P_CANCELLED, PARK_SCORE).

-- BullMQ's getOrSetMaxEvents: the events stream's MAXLEN, set to BullMQ's default where no queue set it yet.
local function maxEventsOf()
  local maxEvents = rcall('HGET', Q_META, 'opts.maxLenEvents')
  if not maxEvents then
    maxEvents = 10000
    rcall('HSET', Q_META, 'opts.maxLenEvents', maxEvents)
  end
  return maxEvents
end

-- Stores the jobs of ARGV whose stored fields are given (ARGV[i + 10] the name, '' = the job exists already:
-- lane only), BullMQ's way, in ARGV order. `stride`: arguments per job, `first`: the first job's index.
-- An idempotent job (ARGV[i + 16] its request fingerprint) gets its key's record with it (ARGV[i + 17] ms to live),
-- and is not stored where the job is gone but the record stands: the key outlives its job (retention may remove a
-- completed job seconds after it ran), and a re-send inside the record's life must not run the work again. Read
-- and written here, in the call that stores the job, so racing sends of one key make one job. Its id may have named
-- an earlier job (the key's record lapsed, IDEMPOTENCY_TTL_S, while the API's cancel tombstone of that job is kept
-- KEEP_FAILED_AGE_S): the tombstone goes, or GET and a re-send would answer the old job's `cancelled` for this one
-- once retention removed it.
-- Returns the delayed score of each job it stored (id -> score), which enqueue would otherwise read back, and the
-- set of those whose record stood without the job (id -> true). Scores
-- within one delayed timestamp go up by one per job, as BullMQ's per-job ZREVRANGEBYSCORE would find them,
-- without reading the set again for each job.
local function storeParked(first, stride, jobs)
  -- BullMQ counts every add, custom id or not, duplicate or not.
  local named = 0
  for k = 1, jobs do
    if ARGV[first + (k - 1) * stride + 10] ~= '' then named = named + 1 end
  end
  local scores, gone = {}, {}
  if named == 0 then return scores, gone end
  rcall('INCRBY', QK .. 'id', named)
  local maxEvents = maxEventsOf()
  local stored = false
  local topScore = {}
  for k = 1, jobs do
    local i = first + (k - 1) * stride
    local id, name = ARGV[i], ARGV[i + 10]
    if name ~= '' then
      local jobKey = Q_JOB .. id
      local fp = ARGV[i + 16]
      if rcall('EXISTS', jobKey) == 1 then
        rcall('XADD', Q_EVENTS, 'MAXLEN', '~', maxEvents, '*', 'event', 'duplicated', 'jobId', id)
      elseif fp ~= '' and rcall('EXISTS', P_IDEM .. id) == 1 then
        gone[id] = true
      else
        if fp ~= '' then
          rcall('HSET', P_IDEM .. id, 'id', id, 'fp', fp)
          rcall('PEXPIRE', P_IDEM .. id, ARGV[i + 17])
          -- Only a key's id is ever made again (any other is a fresh UUID): no DEL for those.
          rcall('DEL', P_CANCELLED .. id)
        end
        local timestamp, delay = tonumber(ARGV[i + 13]), tonumber(ARGV[i + 14])
        rcall('HMSET', jobKey, 'name', name, 'data', ARGV[i + 11], 'opts', ARGV[i + 12], 'timestamp', timestamp,
          'delay', delay, 'priority', tonumber(ARGV[i + 15]))
        rcall('XADD', Q_EVENTS, '*', 'event', 'added', 'jobId', id, 'name', name)
        local at = delay > 0 and timestamp + delay or timestamp
        local minScore, maxScore = at * 0x1000, (at + 1) * 0x1000 - 1
        local score = topScore[at]
        if score == nil then
          local top = rcall('ZREVRANGEBYSCORE', Q_DELAYED, maxScore, minScore, 'WITHSCORES', 'LIMIT', 0, 1)
          score = tonumber(top[2]) or false
        end
        if not score then score = minScore elseif score >= maxScore then score = maxScore else score = score + 1 end
        topScore[at] = score
        rcall('ZADD', Q_DELAYED, score, id)
        rcall('XADD', Q_EVENTS, 'MAXLEN', '~', maxEvents, '*', 'event', 'delayed', 'jobId', id, 'delay', at)
        scores[id] = score
        stored = true
      end
    end
  end
  -- addDelayMarkerIfNeeded, once: the marker's score is what BullMQ's last add would have left. Not when the first
  -- delayed job is parked: that marker names a time years away, and every worker blocked on the marker wakes for it
  -- only to find nothing to fetch (a BZPOPMIN and a moveToActive per enqueue at low load, where a job is dispatched
  -- in its own add). A parked job only ever leaves through a dispatch, whose push to the wait list adds the marker
  -- that wakes a worker for it.
  if stored then
    local nextScore = tonumber(rcall('ZRANGE', Q_DELAYED, 0, 0, 'WITHSCORES')[2])
    if nextScore and nextScore < PARK_SCORE then rcall('ZADD', Q_MARKER, nextScore / 0x1000, '1') end
  end
  return scores, gone
end
