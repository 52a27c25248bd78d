-- Moves one batch-tier job from one state to another, only if it is still in `from` (and, when given, still in
-- that intent): each answer or fallback is handed over once, so a job is woken once whoever races.
-- KEYS[1] the job's batch HASH, KEYS[2] the ZSET of stored answers (job id -> ms stored) the collector's sweep reads
-- ARGV[1] from state, ARGV[2] intent id ('' = any), ARGV[3] to state, ARGV[4] field ('' = none), ARGV[5] its value,
-- ARGV[6] ttl s, ARGV[7] the answer's usage row (a usage stream entry's JSON; '' or absent = none), stored beside
-- the answer as `bill`: appended by whatever later drops the answer unread (batch-cancel-3.lua, dlq-retry-N.lua,
-- batch-settle-3.lua), ARGV[8] job id, ARGV[9] now ms
-- An answer stored with its bill joins the stored-answers set in the same call: a job that ends where no script
-- runs (BullMQ's stalled limit, a removal) still leaves it where the collector's sweep finds it.
-- Returns 1 when moved, 0 otherwise.
if redis.call('HGET', KEYS[1], 'state') ~= ARGV[1] then return 0 end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'intent') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], ARGV[4], ARGV[5]) end
if ARGV[7] and ARGV[7] ~= '' then
  redis.call('HSET', KEYS[1], 'bill', ARGV[7])
  redis.call('ZADD', KEYS[2], ARGV[9], ARGV[8])
end
redis.call('EXPIRE', KEYS[1], ARGV[6])
return 1
