-- Adds one open chat socket to a conversation's presence.
-- KEYS[1] room presence zset, KEYS[2] presence index zset
-- ARGV[1] member "<user>|<node>:<socket>", ARGV[2] room id, ARGV[3] user, ARGV[4] ttl ms
-- Returns { first (1 when this is the user's only live socket in the room), user1, user2, ... }
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = now + tonumber(ARGV[4])
redis.call('ZADD', KEYS[1], expiry, ARGV[1])
redis.call('ZADD', KEYS[2], expiry, ARGV[2] .. '\n' .. ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]) * 2)
local prefix = ARGV[3] .. '|'
local mine = 0
local seen = {}
local users = {}
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')) do
  local bar = string.find(m, '|', 1, true)
  local u = string.sub(m, 1, bar - 1)
  if u == ARGV[3] then mine = mine + 1 end
  if not seen[u] then seen[u] = true; users[#users + 1] = u end
end
local result = { mine == 1 and 1 or 0 }
for _, u in ipairs(users) do result[#result + 1] = u end
return result
