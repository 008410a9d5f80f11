-- Counts one more open socket for a user, unless the user is at the limit; announces the user online
-- when it is their only live socket.
-- KEYS[1] the user's connections zset (member per socket, scored by expiry ms)
-- ARGV[1] member, ARGV[2] limit, ARGV[3] ttl ms, ARGV[4] the user's online channel (same slot),
-- ARGV[5] the announcement to publish there
-- Returns 1 when counted, 0 when the limit is reached.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- Sockets of a node that died without closing them stop being refreshed and expire here.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local open = redis.call('ZCARD', KEYS[1])
if open >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
-- In the script, not after it: announcements of one user go out in the order Redis counted.
if open == 0 then redis.call('SPUBLISH', ARGV[4], ARGV[5]) end
return 1
