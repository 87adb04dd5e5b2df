-- lease_release.lua: give a lease up, only while this owner still holds it (result backend).
--
-- KEYS[1]: {prefix:lease:NAME}  STRING  owner, expiring with a PX ttl
-- ARGV[1]: owner
--
-- Returns 1 when the lease was released, 0 when another owner (or nobody) held it.

if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
