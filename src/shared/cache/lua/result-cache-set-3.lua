-- Stores an entry unless the namespace was invalidated since the caller read it: a result computed
-- before a bump must never be served after it.
-- KEYS[1]: org version counter, KEYS[2]: org+agent version counter, KEYS[3]: entry
-- ARGV[1]: tag the caller computed under ('' = whatever is current), ARGV[2]: json, ARGV[3]: ttl s
-- Returns {stored (0|1), current tag}
local tag = (redis.call('GET', KEYS[1]) or '0') .. '.' .. (redis.call('GET', KEYS[2]) or '0')
if ARGV[1] ~= '' and ARGV[1] ~= tag then
  return {0, tag}
end
redis.call('SET', KEYS[3], tag .. '|' .. ARGV[2], 'EX', tonumber(ARGV[3]))
return {1, tag}
