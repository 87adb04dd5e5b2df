-- release_keys.lua: free idempotency keys whose message finished (acked, dead-lettered or purged).
--
-- KEYS[1]: {prefix}:keys  HASH  idempotency key -> '<claimed_at_ms>|<len(queue)>:<queue><id>'
-- ARGV:    pairs: key, holder ('<len(queue)>:<queue><id>')
--
-- A key is deleted only while it still names that holder: a newer message may have taken it over.
-- Returns how many keys were released.

local released = 0
for i = 1, #ARGV, 2 do
  local current = redis.call('HGET', KEYS[1], ARGV[i])
  if current then
    local bar = string.find(current, '|', 1, true)
    if bar and string.sub(current, bar + 1) == ARGV[i + 1] then
      redis.call('HDEL', KEYS[1], ARGV[i])
      released = released + 1
    end
  end
end
return released
