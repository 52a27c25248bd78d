-- Writes one process's metrics snapshot into the exchange hash, unless a scrape folded that process into the
-- retired totals meanwhile (it found the snapshot stale): writing its whole counts again would count them twice.
-- KEYS[1]: the exchange hash, KEYS[2]: the retired totals (kept as long as the exchange)
-- ARGV[1]: the process's field, ARGV[2]: its snapshot, ARGV[3]: the keys' TTL (ms),
-- ARGV[4]: '1' when this field was written before (so its absence means it was folded)
-- Returns 1 if written, 0 if the field was folded
if ARGV[4] == '1' and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
