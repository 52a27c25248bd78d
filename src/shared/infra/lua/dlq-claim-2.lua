-- Claims one dead-letter entry for a retry, atomically: the job must still sit in the failed set, its DLQ
-- retry count must be the one the caller read (so two reprocessors racing retry it once) and under the
-- limit, and it must still be of the required class. Then the retry is counted and the error it is
-- retried from is recorded.
-- KEYS[1]: DLQ meta hash of the entry      KEYS[2]: the agent queue's failed sorted set
-- ARGV[1]: job id
-- ARGV[2]: expected retry count, '' for any
-- ARGV[3]: max retries, -1 for no limit
-- ARGV[4]: required class, '' for any
-- ARGV[5]: class to store when the hash has none (classified lazily by the caller)
-- ARGV[6]: last error (the failed reason being retried)
-- ARGV[7]: now, epoch ms
-- ARGV[8]: TTL of the hash, seconds
-- Returns the new retry count, or -1 not failed, -2 count moved on, -3 limit reached, -4 other class.
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  return -1
end
local m = redis.call('HMGET', KEYS[1], 'retries', 'class')
local retries = tonumber(m[1]) or 0
local class = m[2] or ARGV[5]
if ARGV[2] ~= '' and retries ~= tonumber(ARGV[2]) then
  return -2
end
local max = tonumber(ARGV[3])
if max >= 0 and retries >= max then
  return -3
end
if ARGV[4] ~= '' and class ~= ARGV[4] then
  return -4
end
redis.call('HSET', KEYS[1], 'retries', retries + 1, 'class', class, 'lastError', ARGV[6], 'lastRetryAt', ARGV[7])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[8]))
return retries + 1
