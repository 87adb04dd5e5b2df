-- pass_on.lua: a woken result waiter reads the record and passes the wake-up token on (result backend).
--
-- KEYS[1]: {prefix:r:ID}         STRING  "STATE\n" + record, with a PX ttl
-- KEYS[2]: {prefix:r:ID}:notify  LIST    wake-up tokens (the waiter popped one; it puts one back)
-- ARGV[1]: milliseconds the token lives
--
-- Returns the record string, or false when there is none. The async waiter's one round trip for
-- what the sync waiter pipelines (GET, RPUSH, LTRIM, PEXPIRE): every waiter on the id wakes in turn.

local record = redis.call('GET', KEYS[1])
redis.call('RPUSH', KEYS[2], '1')
redis.call('LTRIM', KEYS[2], 0, 0)
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return record
