-- Invalidates a result-cache namespace: bumps its version counter and, in the same call, tells every
-- process holding L1 copies to drop them (they serve L1 hits from memory, without reading the counter).
-- KEYS[1]: version counter (org, or org+agent)
-- ARGV[1]: invalidation channel, ARGV[2]: message ("<org>" or "<org>\n<agent>", both URI-encoded)
-- Returns the new version
local v = redis.call('INCR', KEYS[1])
redis.call('SPUBLISH', ARGV[1], ARGV[2])
return v
