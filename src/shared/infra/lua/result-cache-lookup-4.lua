-- One round trip for a result-cache read: the namespace versions, the L2 entry when the caller's L1
-- copy is stale or missing, and optionally the single-flight lock when it is a miss.
-- KEYS[1]: org version counter, KEYS[2]: org+agent version counter, KEYS[3]: entry ("<tag>|<json>"),
-- KEYS[4]: single-flight lock
-- ARGV[1]: tag ("<orgVersion>.<agentVersion>") of the caller's L1 copy, '' if none
-- ARGV[2]: lock token ("<owner>#<random>"), '' to only report whether the lock is held; ARGV[3]: lock ttl ms;
-- ARGV[4]: owner ('' for none). A lock held under the same owner was left by this owner's previous,
-- dead incarnation (BullMQ re-delivers a job only once its last holder lost the lock), so it is taken over.
-- Returns {tag, hit (0 miss | 1 the L1 copy is current | 2 entry follows), lock (0 free | 1 held by
-- another | 2 taken by this call), entry json (only when hit = 2)}
local tag = (redis.call('GET', KEYS[1]) or '0') .. '.' .. (redis.call('GET', KEYS[2]) or '0')
if ARGV[1] ~= '' and ARGV[1] == tag then
  return {tag, 1, 0}
end
local e = redis.call('GET', KEYS[3])
-- An entry written under older versions was invalidated by a bump: it reads as a miss.
if e and string.sub(e, 1, #tag + 1) == tag .. '|' then
  return {tag, 2, 0, string.sub(e, #tag + 2)}
end
if ARGV[2] ~= '' then
  if redis.call('SET', KEYS[4], ARGV[2], 'PX', tonumber(ARGV[3]), 'NX') then
    return {tag, 0, 2}
  end
  if ARGV[4] ~= '' then
    local holder = redis.call('GET', KEYS[4])
    if holder and string.sub(holder, 1, #ARGV[4] + 1) == ARGV[4] .. '#' then
      redis.call('SET', KEYS[4], ARGV[2], 'PX', tonumber(ARGV[3]))
      return {tag, 0, 2}
    end
  end
  return {tag, 0, 1}
end
return {tag, 0, redis.call('EXISTS', KEYS[4])}
