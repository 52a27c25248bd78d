-- Claims one dead-letter entry for a retry, atomically: the job must still sit in the failed set, its DLQ
-- retry count must be the one the caller read (so two reprocessors racing retry it once) and under the
-- limit, it must still be of the required class, and no other caller may hold a claim on this stay in the
-- failed set (its failure time, the set's score). Then the retry is counted, the error it is retried from
-- recorded, and the caller's corrected data written: only the one caller whose claim wins ever writes it.
-- The claim is held for this stay until ARGV[10]: the caller moves the job out of the failed set (BullMQ's
-- retry) right after; a caller that read the entry after this claim was counted is refused meanwhile, and
-- one that died between claim and move blocks the entry only until then.
-- A cancel marker is of the run it cancelled, which is over: left, it would cancel the retry at its claim.
-- So is the job's event stream (a streaming job's): its last entry is the failure that ended that run, which a
-- reader of the retried job, starting from the stream's first entry, would take for the end of the new run.
-- KEYS[1]: DLQ meta hash of the entry      KEYS[2]: the agent queue's failed sorted set
-- KEYS[3]: the job's hash                 KEYS[4]: the API's cancel marker of the job
-- KEYS[5]: the job's event stream
-- KEYS[6], KEYS[7] (a flow child or pipeline step only): its BullMQ parent's hash and the parent queue's
-- waiting-children set. BullMQ's retry puts a child back in its parent's dependencies but never moves a
-- parent that has left waiting-children back: a retry then would run (and bill) a result nobody reads.
-- ARGV[1]: job id
-- ARGV[2]: expected retry count, '' for any
-- ARGV[3]: max retries, -1 for no limit
-- ARGV[4]: required class, '' for any
-- ARGV[5]: class to store when the hash has none (classified lazily by the caller)
-- ARGV[6]: last error (the failed reason being retried)
-- ARGV[7]: now, epoch ms
-- ARGV[8]: TTL of the hash, seconds
-- ARGV[9]: the job's new data (JSON), '' to keep it
-- ARGV[10]: until when the claim is held, epoch ms
-- ARGV[11]: the parent's id (with KEYS[6], KEYS[7])
-- Returns the new retry count, or -1 not failed, -2 count moved on (or claimed by another caller),
-- -3 limit reached, -4 other class, -5 its parent no longer waits for it.
local stay = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not stay then
  return -1
end
local m = redis.call('HMGET', KEYS[1], 'retries', 'class', 'claimOf', 'claimUntil')
local retries = tonumber(m[1]) or 0
local class = m[2] or ARGV[5]
if ARGV[2] ~= '' and retries ~= tonumber(ARGV[2]) then
  return -2
end
if m[3] == stay and (tonumber(m[4]) or 0) > tonumber(ARGV[7]) then
  return -2
end
local max = tonumber(ARGV[3])
if max >= 0 and retries >= max then
  return -3
end
if ARGV[4] ~= '' and class ~= ARGV[4] then
  return -4
end
if #KEYS >= 7 and (redis.call('EXISTS', KEYS[6]) == 0 or not redis.call('ZSCORE', KEYS[7], ARGV[11])) then
  return -5
end
redis.call('HSET', KEYS[1], 'retries', retries + 1, 'class', class, 'lastError', ARGV[6], 'lastRetryAt', ARGV[7], 'claimOf', stay, 'claimUntil', ARGV[10])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[8]))
redis.call('DEL', KEYS[4], KEYS[5])
if ARGV[9] ~= '' then
  redis.call('HSET', KEYS[3], 'data', ARGV[9])
end
return retries + 1
