-- Writes one process's metrics snapshot into the exchange hash, unless a scrape folded that process into the
-- retired totals meanwhile (it found the snapshot stale): writing its whole counts again would count them twice.
-- KEYS[1]: the exchange hash, KEYS[2]: the retired totals (kept as long as the exchange)
-- ARGV[1]: the process's field, ARGV[2]: its snapshot (prom-client's JSON), ARGV[3]: the keys' TTL (ms),
-- ARGV[4]: '1' when this field was written before (so its absence means it was folded)
-- Writes {"at": <this node's TIME, ms>, "metrics": <snapshot>}: stamped by the node that holds the exchange, the
-- clock every scrape's staleness check reads too (a cluster's primaries' clocks may differ).
-- Returns 1 if written, 0 if the field was folded
if ARGV[4] == '1' and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
local t = redis.call('TIME')
local at = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], '{"at":' .. string.format('%.0f', at) .. ',"metrics":' .. ARGV[2] .. '}')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
