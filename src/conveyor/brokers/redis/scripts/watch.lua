-- watch.lua: a coroutine streaming a task's updates (aupdates) marks the record watched, then reads it
-- (result backend).
--
-- KEYS[1]: {prefix:r:ID}         STRING  "STATE\n" + record, with a PX ttl
-- KEYS[2]: {prefix:r:ID}:watch   STRING  "1" while watched: result_set.lua then pushes a token onto
--                                        {prefix:r:ID}:changed on every write, progress notes too
-- ARGV[1]: milliseconds the mark lives (the stream's next blocking pop, and a margin)
--
-- Returns the record string, or false when there is none. The mark is set before the read, so a
-- write after the read always leaves a token for the pop that follows.

redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
return redis.call('GET', KEYS[1])
