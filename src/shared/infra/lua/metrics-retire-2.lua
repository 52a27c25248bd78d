-- Folds departed processes into the exchange's retired totals: writes the new totals and deletes the processes'
-- fields in one step, only if neither changed since the caller read them. So two scrapes finding the same stale
-- field (or a scrape and the closing process itself) fold it once, and a process that published again is not folded.
-- KEYS[1]: the exchange hash, KEYS[2]: the retired totals (fields totals, version)
-- ARGV[1]: the totals' version the caller read ('0' when none), ARGV[2]: the new totals, ARGV[3]: the keys' TTL (ms),
-- ARGV[4..]: pairs of a process's field and the SHA1 of the snapshot the caller read there ('-': the caller read
-- none, and the field must still be absent)
-- Returns 1 if folded, 0 if something changed (nothing is written)
local version = redis.call('HGET', KEYS[2], 'version') or '0'
if version ~= ARGV[1] then return 0 end
for i = 4, #ARGV, 2 do
  local raw = redis.call('HGET', KEYS[1], ARGV[i])
  if ARGV[i + 1] == '-' then
    if raw then return 0 end
  elseif not raw or redis.sha1hex(raw) ~= ARGV[i + 1] then
    return 0
  end
end
for i = 4, #ARGV, 2 do redis.call('HDEL', KEYS[1], ARGV[i]) end
redis.call('HSET', KEYS[2], 'totals', ARGV[2], 'version', tostring(tonumber(version) + 1))
redis.call('PEXPIRE', KEYS[2], ARGV[3])
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return 1
