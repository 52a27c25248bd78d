-- Extends a single-flight lock while its holder is still computing, so a short TTL frees the lock
-- soon after a holder dies without expiring under a live one.
-- KEYS[1]: lock, ARGV[1]: token, ARGV[2]: ttl ms
-- Returns 1 if extended, 0 if the lock is no longer this caller's
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
