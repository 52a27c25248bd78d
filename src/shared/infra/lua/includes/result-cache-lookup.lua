-- A result-cache read: the namespace versions, the L2 entry when the caller's L1 copy is stale or missing,
-- and optionally the single-flight lock when it is a miss. Included (`--- @include`) by
-- result-cache-lookup-5.lua, its own round trip, and by fair-core-N.lua, whose claim carries the lookup of
-- the job it admits so that a cache miss costs no round trip before the model call.
-- keys[from..from + 4]: the org's, the org+agent's and the agent's shared version counters (resultCacheTag), the
-- entry ("<tag>|<json>") and the single-flight lock.
-- l1Tag: tag ("<orgVersion>.<agentVersion>.<sharedVersion>") of the caller's L1 copy, '' if none; token: lock token
-- ("<owner>#<random>"), '' to only report whether the lock is held; lockTtlMs; owner ('' for none). A lock
-- held under the same owner was left by this owner's previous, dead incarnation (BullMQ re-delivers a job
-- only once its last holder lost the lock), so it is taken over.
-- Returns {tag, hit (0 miss | 1 the L1 copy is current | 2 entry follows), lock (0 free | 1 held by another |
-- 2 taken by this call), entry json (only when hit = 2)}
--- @include "result-cache-tag"
local function resultCacheLookup(keys, from, l1Tag, token, lockTtlMs, owner)
  local kEntry, kLock = keys[from + 3], keys[from + 4]
  local tag = resultCacheTag(keys, from)
  if l1Tag ~= '' and l1Tag == tag then
    return {tag, 1, 0}
  end
  local e = redis.call('GET', kEntry)
  -- An entry written under older versions was invalidated by a bump: it reads as a miss.
  if e and string.sub(e, 1, #tag + 1) == tag .. '|' then
    return {tag, 2, 0, string.sub(e, #tag + 2)}
  end
  if token ~= '' then
    -- The TTL as the caller sent it (a number's digits): as a Lua number (tonumber, until 2026-12-07) redis.call
    -- formatted it back with `%.17g`, ~2,400 Redis instructions a miss's claim.
    if redis.call('SET', kLock, token, 'PX', lockTtlMs, 'NX') then
      return {tag, 0, 2}
    end
    if owner ~= '' then
      local holder = redis.call('GET', kLock)
      if holder and string.sub(holder, 1, #owner + 1) == owner .. '#' then
        redis.call('SET', kLock, token, 'PX', lockTtlMs)
        return {tag, 0, 2}
      end
    end
    return {tag, 0, 1}
  end
  return {tag, 0, redis.call('EXISTS', kLock)}
end
