-- Records the class of a job that just failed for good in its DLQ meta hash; returns its DLQ retry count so far.
-- The hash is keyed by the job id, and an id comes back (an idempotency key sent again after its job was removed
-- outside the DLQ's own delete: Bull Board, BullMQ's failed-set trimming): a hash of another incarnation (its
-- `ts`, the job's creation time, differs) is that job's, so its retry count, last error and retry time go
-- instead of being inherited (the new job would start with the old one's retries used up). A hash without
-- `ts` (written before it was recorded) cannot be told apart and is kept.
-- KEYS[1]: the DLQ meta hash of the job
-- ARGV[1]: the job's creation time (BullMQ's `timestamp`)   ARGV[2]: class   ARGV[3]: type
-- ARGV[4]: failed reason (truncated)   ARGV[5]: failed at, epoch ms   ARGV[6]: TTL of the hash, seconds
local prev = redis.call('HGET', KEYS[1], 'ts')
if prev and prev ~= ARGV[1] then
  redis.call('DEL', KEYS[1])
end
redis.call('HSET', KEYS[1], 'ts', ARGV[1], 'class', ARGV[2], 'type', ARGV[3], 'reason', ARGV[4], 'failedAt', ARGV[5])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[6]))
return tonumber(redis.call('HGET', KEYS[1], 'retries')) or 0
