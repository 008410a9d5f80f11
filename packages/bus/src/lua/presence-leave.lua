-- Removes one chat socket from a conversation's presence (closed, or expired when ARGV[4] is set).
-- KEYS[1] room presence zset, KEYS[2] presence index zset
-- ARGV[1] member, ARGV[2] room id, ARGV[3] user, ARGV[4] "expire": remove only if its expiry has passed
-- Returns 1 when the member was removed and the user has no other live socket in the room, else 0.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[4] == 'expire' then
  local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if score and tonumber(score) > now then
    -- Refreshed since the sweep saw it: alive after all; re-sync the index.
    redis.call('ZADD', KEYS[2], score, ARGV[2] .. '\n' .. ARGV[1])
    return 0
  end
end
redis.call('ZREM', KEYS[2], ARGV[2] .. '\n' .. ARGV[1])
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
local prefix = ARGV[3] .. '|'
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')) do
  if string.sub(m, 1, #prefix) == prefix then return 0 end
end
-- This user is gone from the room: drop their expired, not yet swept entries (of a dead node) too,
-- or the sweep would report the same departure a second time.
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  if string.sub(m, 1, #prefix) == prefix then
    redis.call('ZREM', KEYS[1], m)
    redis.call('ZREM', KEYS[2], ARGV[2] .. '\n' .. m)
  end
end
return 1
