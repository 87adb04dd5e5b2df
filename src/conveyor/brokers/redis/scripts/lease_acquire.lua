-- lease_acquire.lua: take a free lease, or renew the one this owner holds (result backend).
--
-- KEYS[1]: {prefix:lease:NAME}  STRING  owner, expiring with a PX ttl (server clock)
-- ARGV[1]: owner
-- ARGV[2]: ttl in milliseconds
--
-- Returns 1 when the owner holds the lease after the call, 0 when another owner holds it.

local current = redis.call('GET', KEYS[1])
if not current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
