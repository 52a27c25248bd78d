-- Marks a breaker key's quota spent (a per-day 429) and, in the same call, tells every process serving that
-- key's clean answer from memory to drop it: from now on the key must be refused, which only the acquire
-- script (which reads the mark) can say.
-- KEYS[1]: quota mark (see circuit-breaker-acquire-2.lua)
-- ARGV[1]: mark value (epoch ms until which the quota is spent), ARGV[2]: mark ttl ms,
-- ARGV[3]: invalidation channel ('' = no broadcast), ARGV[4]: the message: the key's breaker hash name
--         (as circuit-breaker-record-1.lua publishes it; only published, never read)
-- Returns 1
redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
if ARGV[3] ~= '' then
  redis.call('SPUBLISH', ARGV[3], ARGV[4])
end
return 1
