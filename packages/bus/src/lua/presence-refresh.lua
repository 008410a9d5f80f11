-- Extends the expiry of live sockets' presence entries (only those still present: XX).
-- KEYS[1] presence index zset, KEYS[2..n] room presence zsets
-- ARGV[1] ttl ms, ARGV[2..n] "<room id>\n<member>", one per room key, in the same order
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local expiry = now + ttl
for i = 2, #KEYS do
  local entry = ARGV[i]
  local nl = string.find(entry, '\n', 1, true)
  local member = string.sub(entry, nl + 1)
  -- An entry already swept as expired stays gone: its user_leave has been sent.
  if redis.call('ZSCORE', KEYS[i], member) then
    redis.call('ZADD', KEYS[i], 'XX', expiry, member)
    redis.call('ZADD', KEYS[1], expiry, entry)
    redis.call('PEXPIRE', KEYS[i], ttl * 2)
  end
end
return 0
