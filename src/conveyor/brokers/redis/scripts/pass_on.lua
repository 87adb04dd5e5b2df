-- pass_on.lua: a result waiter reads the record after its blocking pop, passing the wake-up token on (result backend).
--
-- KEYS[1]: {prefix:r:ID}         STRING  "STATE\n" + record, with a PX ttl
-- KEYS[2]: {prefix:r:ID}:notify  LIST    wake-up tokens (one exists only while the record is final)
-- ARGV[1]: milliseconds the token lives
--
-- Returns the record string, or false when there is none. The async waiter sends this right behind
-- its BLPOP on the same connection (Redis runs it the moment the pop returns): the wait and the read
-- cost one round trip. When the record is final, one token is put back so the next waiter on the id
-- wakes too (the pop may have taken it); when it is not (the pop timed out), nothing is pushed.

local record = redis.call('GET', KEYS[1])
if record then
  local state = string.sub(record, 1, 8)
  if state == 'SUCCESS\n' or state == 'FAILURE\n' or state == 'REVOKED\n' then
    redis.call('RPUSH', KEYS[2], '1')
    redis.call('LTRIM', KEYS[2], 0, 0)
    redis.call('PEXPIRE', KEYS[2], ARGV[1])
  end
end
return record
