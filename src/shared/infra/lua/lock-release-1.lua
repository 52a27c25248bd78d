-- Releases a lock (a key holding its owner's token) only if this caller still holds it: it may have
-- expired and been taken by another. Used by the result cache's single-flight lock and the batch collector's.
-- KEYS[1]: lock, ARGV[1]: token
-- Returns 1 if released, 0 otherwise
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
