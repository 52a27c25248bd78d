-- An org's new jobs of one UTC day against its daily job limit: admission reserves a request's new jobs here, in
-- every API process alike, one atomic decision per request, so no burst and no number of processes takes more
-- than the limit (counting agent_runs, written after attempts end, let through whatever arrived before).
-- KEYS[1]: the org's count for the day (queue-keys.ts guardKeys.dailyJobs)
-- ARGV[1]: jobs: > 0 reserves them, all or none; < 0 gives that many back (jobs of an admitted request that turned
--   out to exist already: an idempotent re-send that raced with the first)
-- ARGV[2]: the limit (reserve only)
-- ARGV[3]: the floor (reserve only): jobs of that day agent_runs holds a row of. The count never reads lower,
--   so a Redis that lost the key (a restart without persistence) does not give the day's allowance back.
-- ARGV[4]: the key's expiry, unix ms (after the day's end; reserve only)
-- Returns {1 reserved or given back | 0 refused, the day's count after the call (refused: as it stands)}
local n = tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[1]))
if n < 0 then
  -- Nothing to give back to once the key expired: it counted a day that is over.
  if not cur then return {1, 0} end
  cur = math.max(0, cur + n)
  redis.call('SET', KEYS[1], cur, 'KEEPTTL')
  return {1, cur}
end
cur = math.max(cur or 0, tonumber(ARGV[3]))
if cur + n > tonumber(ARGV[2]) then return {0, cur} end
redis.call('SET', KEYS[1], cur + n, 'PXAT', ARGV[4])
return {1, cur + n}
