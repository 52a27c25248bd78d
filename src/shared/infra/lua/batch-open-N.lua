-- Opens a batch intent over a model's pending jobs, atomically: only jobs still pending join it (moved to
-- submitted, with the intent's id), every listed id leaves the pending set, and the intent is recorded with the
-- jobs it really took. Two collectors racing over the same pending list can never put one job in two batches.
-- KEYS[1] the intent HASH, KEYS[2] the SET of open intents, KEYS[3] the model's pending ZSET, KEYS[4..] the jobs'
-- batch HASHes (same order as the ids)
-- ARGV[1] intent id, ARGV[2] model, ARGV[3] displayName, ARGV[4] created ms, ARGV[5] ttl s, ARGV[6..] job ids
-- Returns the ids that joined (none: no intent was recorded).
local taken = {}
local minDeadline = nil
for i = 6, #ARGV do
  local jk = KEYS[i - 2]
  redis.call('ZREM', KEYS[3], ARGV[i])
  if redis.call('HGET', jk, 'state') == 'pending' then
    redis.call('HSET', jk, 'state', 'submitted', 'intent', ARGV[1])
    taken[#taken + 1] = ARGV[i]
    local d = tonumber(redis.call('HGET', jk, 'deadlineAt'))
    if d and (not minDeadline or d < minDeadline) then minDeadline = d end
  end
end
if #taken == 0 then return taken end
redis.call('HSET', KEYS[1], 'model', ARGV[2], 'displayName', ARGV[3], 'jobs', cjson.encode(taken), 'createdAt', ARGV[4])
if minDeadline then redis.call('HSET', KEYS[1], 'minDeadline', string.format('%.0f', minDeadline)) end
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('SADD', KEYS[2], ARGV[1])
return taken
