-- A batch-tier job that no longer takes its answer (cancelled, or failed for good) leaves the batch tier,
-- atomically: out of its model's pending set (no later batch takes it) and marked cancelled (a batch already
-- holding it hands it nothing: every hand-over moves only a job still `submitted`). An answer the batch already
-- stored that no attempt read (`done`, no `readBy`) is dropped the same way, and billed: Gemini charged for it
-- and no attempt's row will carry it, so the usage row the collector priced when it stored the answer (`bill`) is
-- appended to the usage stream in this call (its part is the batch's intent: a second append is the same row).
-- Only the incarnation that was cancelled: a record of a newer job under the same id stays.
-- KEYS[1] the job's batch HASH, KEYS[2] the model's pending ZSET, KEYS[3] the usage stream
-- ARGV[1] job id, ARGV[2] the cancelled job's creation time, ARGV[3] ttl s, ARGV[4] the usage entry's field name
-- Returns 1 when cancelled, 0 when the record is not that job's, or was already read or settled.
local state = redis.call('HGET', KEYS[1], 'state')
local unread = state == 'done' and redis.call('HEXISTS', KEYS[1], 'readBy') == 0
if state ~= 'pending' and state ~= 'submitted' and not unread then return 0 end
local ts = redis.call('HGET', KEYS[1], 'ts')
if ts and ts ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], 'state', 'cancelled')
redis.call('EXPIRE', KEYS[1], ARGV[3])
if unread then
  local bill = redis.call('HGET', KEYS[1], 'bill')
  if bill then redis.call('XADD', KEYS[3], '*', ARGV[4], bill) end
end
return 1
