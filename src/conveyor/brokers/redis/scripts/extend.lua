-- extend.lua: heartbeat; push the leases of held messages of one queue LEASE seconds past server now,
-- and mark the running ones started (an expired lease then counts their delivery: see expire in _common.lua).
--
-- KEYS[1..6]: T:ready, T:scheduled, T:inflight, T:dead, T:seq, T:signal  (T = {prefix:q:NAME})
-- KEYS[7]:    T:seen (catch_up in _common.lua: a stall's length is given back to running leases first)
-- ARGV:       T:m:, lease (seconds), then triples: id, token, running ('1': running now; '0')
--
-- Touches: T:inflight (ZADD XX new deadline), T:seen, T:m:ID started = '1' (running ones); reads T:m:ID token.
-- Returns the ids whose lease is no longer held (expired and recovered, acked, or never held).

local now = server_now()
catch_up(KEYS[7], now)
local deadline = now + tonumber(ARGV[2])
local lost, leases = {}, {}
for i = 3, #ARGV, 3 do
  local id = ARGV[i]
  if held(id, ARGV[i + 1]) and redis.call('ZSCORE', INFLIGHT, id) then
    leases[#leases + 1] = deadline
    leases[#leases + 1] = id
    if ARGV[i + 2] == '1' then redis.call('HSET', MSG .. id, 'started', '1') end
  else
    lost[#lost + 1] = id
  end
end
for i = 1, #leases, CHUNK do
  redis.call('ZADD', INFLIGHT, 'XX', unpack(leases, i, math.min(i + CHUNK - 1, #leases)))
end
return lost
