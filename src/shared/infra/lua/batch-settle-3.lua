-- The collector's sweep settles one entry of the stored-answers set: an answer stored that no attempt read
-- (`done`, no `readBy`) of a job that will never read it (it failed outside the worker, was removed, or its
-- record is about to expire) is dropped and billed as batch-cancel-3.lua drops one: marked cancelled, its usage
-- row (`bill`) appended to the usage stream in this call (its part is the batch's intent: a second append is the
-- same row). Only the record of the job the sweep judged (its creation time): a newer job's record under the id
-- keeps its entry. An entry whose record no longer holds an unread answer (read, cancelled, expired) just leaves.
-- KEYS[1] the job's batch HASH, KEYS[2] the ZSET of stored answers, KEYS[3] the usage stream
-- ARGV[1] job id, ARGV[2] the judged job's creation time ('' = a record without one), ARGV[3] ttl s,
-- ARGV[4] the usage entry's field name
-- Returns 1 when an unread answer was dropped (billed if it had a bill), 0 otherwise.
local state = redis.call('HGET', KEYS[1], 'state')
local unread = state == 'done' and redis.call('HEXISTS', KEYS[1], 'readBy') == 0
if not unread then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
if (redis.call('HGET', KEYS[1], 'ts') or '') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'cancelled')
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[1])
local bill = redis.call('HGET', KEYS[1], 'bill')
if bill then redis.call('XADD', KEYS[3], '*', ARGV[4], bill) end
return 1
