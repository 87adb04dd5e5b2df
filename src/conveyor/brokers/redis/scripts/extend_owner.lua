-- extend_owner.lua: heartbeat on behalf of OWNER (its supervisor, when the owner's own heartbeat is
-- starved): push the lease of every message of one queue leased to OWNER LEASE seconds past server now.
--
-- KEYS[1..6]: T:ready, T:scheduled, T:inflight, T:dead, T:seq, T:signal  (T = {prefix:q:NAME})
-- ARGV:       T:m:, owner, lease (seconds)
--
-- Touches: T:inflight (scanned: in-flight sets are small, bounded by workers' slots; ZADD XX new
-- deadline); reads T:m:ID owner.
-- Returns how many leases were extended.

local owner, deadline = ARGV[2], server_now() + tonumber(ARGV[3])
local leases, count = {}, 0
for _, id in ipairs(redis.call('ZRANGE', INFLIGHT, 0, -1)) do
  if redis.call('HGET', MSG .. id, 'owner') == owner then
    leases[#leases + 1] = deadline
    leases[#leases + 1] = id
    count = count + 1
  end
end
for i = 1, #leases, CHUNK do
  redis.call('ZADD', INFLIGHT, 'XX', unpack(leases, i, math.min(i + CHUNK - 1, #leases)))
end
return count
