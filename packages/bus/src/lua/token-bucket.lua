-- A user's token bucket, prepended to the scripts that take from it (rate-take.lua, accept.lua).
-- Takes one send from the bucket at `key` (a hash: tokens, at): 0 when taken, else the ms until a
-- token is there (nothing taken). `rate` tokens per second, at most `burst` held.
local function take_token(key, rate, burst)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local state = redis.call('HMGET', key, 'tokens', 'at')
  local tokens = tonumber(state[1]) or burst
  local at = tonumber(state[2]) or now
  tokens = math.min(burst, tokens + (now - at) * rate / 1000)
  if tokens < 1 then return math.ceil((1 - tokens) * 1000 / rate) end
  redis.call('HSET', key, 'tokens', tostring(tokens - 1), 'at', tostring(now))
  redis.call('PEXPIRE', key, math.ceil(burst * 1000 / rate) + 1000)
  return 0
end
