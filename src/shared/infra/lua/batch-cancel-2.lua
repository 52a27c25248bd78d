-- A cancelled batch-tier job leaves the batch tier, atomically: out of its model's pending set (no later batch
-- takes it) and marked cancelled (a batch already holding it hands it nothing: every hand-over moves only a
-- job still `submitted`). Only the incarnation that was cancelled: a record of a newer job under the same id stays.
-- KEYS[1] the job's batch HASH, KEYS[2] the model's pending ZSET
-- ARGV[1] job id, ARGV[2] the cancelled job's creation time, ARGV[3] ttl s
-- Returns 1 when cancelled, 0 when the record is not that job's or already answered.
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'pending' and state ~= 'submitted' then return 0 end
local ts = redis.call('HGET', KEYS[1], 'ts')
if ts and ts ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], 'state', 'cancelled')
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
