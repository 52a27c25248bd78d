-- Invalidates a result-cache namespace: bumps its version counter and, in the same call, tells every
-- process holding L1 copies to drop them (they serve L1 hits from memory, without reading the counter).
-- KEYS[1]: version counter (org, org+agent, or the agent's in every org)
-- ARGV[1]: invalidation channel, ARGV[2]: message ("<org>", "<org>\n<agent>", or "\n<agent>" for every org; URI-encoded)
-- Returns the new version
local v = redis.call('INCR', KEYS[1])
redis.call('SPUBLISH', ARGV[1], ARGV[2])
return v
