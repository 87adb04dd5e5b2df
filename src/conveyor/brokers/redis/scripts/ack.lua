-- ack.lua: delete finished messages of one queue; a delivery with a stale lease token is ignored.
--
-- KEYS[1..6]: T:ready, T:scheduled, T:inflight, T:dead, T:seq, T:signal  (T = {prefix:q:NAME})
-- ARGV:       T:m:, then pairs: id, token
--
-- Touches: T:m:ID (one DEL for the batch), T:inflight (ZREM).
-- Returns flat {key, id, ...}: idempotency keys the caller releases in {prefix}:keys (release_keys.lua).

local released, gone, hashes = {}, {}, {}
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  local m = MSG .. id
  local f = redis.call('HMGET', m, 'token', 'key')
  if f[1] == ARGV[i + 1] then
    hashes[#hashes + 1] = m
    gone[#gone + 1] = id
    if f[2] then
      released[#released + 1] = f[2]
      released[#released + 1] = id
    end
  end
end
-- One DEL for the batch: each redis.call costs its argument objects, a command lookup and a reply
-- serialized and parsed back into Lua, more than deleting a small hash.
if #gone > 0 then
  chunked('DEL', nil, hashes)
  chunked('ZREM', INFLIGHT, gone)
end
return released
