-- One round trip for a result-cache read (see includes/result-cache-lookup.lua).
-- KEYS[1]: org version counter, KEYS[2]: org+agent version counter, KEYS[3]: the agent's version counter in every
-- org (shared knowledge), KEYS[4]: entry ("<tag>|<json>"), KEYS[5]: single-flight lock
-- ARGV[1]: tag of the caller's L1 copy ('' if none), ARGV[2]: lock token ('' to only look), ARGV[3]: lock ttl
-- ms, ARGV[4]: owner ('' for none)
-- Returns {tag, hit (0 | 1 | 2), lock (0 | 1 | 2), entry json (hit = 2 only)}
--- @include "result-cache-lookup"
return resultCacheLookup(KEYS, 1, ARGV[1], ARGV[2], ARGV[3], ARGV[4])
