-- claim.lua: claim idempotency keys for messages about to be enqueued (global slot {prefix}).
--
-- KEYS[1]: {prefix}:keys  HASH  idempotency key -> claim: '<claimed_at_ms>|<len(queue)>:<queue><id>'
-- ARGV:    triples: key, holder ('<len(queue)>:<queue><id>'), expected (a free key is always claimed;
--          a held one only when expected is the exact claim value a stale holder left)
--
-- Returns {r1, r2, ...}: per triple '' when the key is now claimed for this holder, else the
-- claim value that holds it. Claims are a hint: the caller checks that a holder still lives
-- (alive.lua, in the holder's queue slot) and takes a stale claim over with a second call.

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 1, #ARGV, 3 do
  local key, value, expected = ARGV[i], string.format('%d', now_ms) .. '|' .. ARGV[i + 1], ARGV[i + 2]
  local current = redis.call('HGET', KEYS[1], key)
  if not current or (expected ~= '' and current == expected) then
    redis.call('HSET', KEYS[1], key, value)
    out[#out + 1] = ''
  else
    out[#out + 1] = current
  end
end
return out
