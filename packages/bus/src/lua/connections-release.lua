-- Uncounts a socket; announces the user offline when no live socket of theirs is left.
-- KEYS[1] the user's connections zset; ARGV[1] member, ARGV[2] the user's online channel (same
-- slot), ARGV[3] the announcement to publish there
-- Returns 1 when that was the user's last live socket.
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) > 0 then return 0 end
redis.call('SPUBLISH', ARGV[2], ARGV[3])
return 1
