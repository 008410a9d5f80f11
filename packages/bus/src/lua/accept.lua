-- Accepts one client entry (a chat message or a read receipt) into the stream, atomically:
-- rate limit, then idempotency on the sender's client_id in this conversation, then XADD + PUBLISH.
-- KEYS[1] stream, KEYS[2] rate bucket hash of the sender, KEYS[3] idempotency key of (sender, recipient, client_id) (optional)
-- ARGV[1] entry JSON, ARGV[2] channel ("" = publish nothing), ARGV[3] envelope to publish,
-- ARGV[4] the chat_message frame (kept under the idempotency key for retries),
-- ARGV[5] rate per second (0 = unlimited), ARGV[6] burst, ARGV[7] idempotency TTL seconds
-- Returns {"accepted", stream id} | {"duplicate", original frame} | {"rate_limited", retry after ms}
if KEYS[3] then
  local original = redis.call('GET', KEYS[3])
  if original then return { 'duplicate', original } end
end
local rate = tonumber(ARGV[5])
if rate > 0 then
  local burst = tonumber(ARGV[6])
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local state = redis.call('HMGET', KEYS[2], 'tokens', 'at')
  local tokens = tonumber(state[1]) or burst
  local at = tonumber(state[2]) or now
  tokens = math.min(burst, tokens + (now - at) * rate / 1000)
  if tokens < 1 then
    return { 'rate_limited', tostring(math.ceil((1 - tokens) * 1000 / rate)) }
  end
  redis.call('HSET', KEYS[2], 'tokens', tostring(tokens - 1), 'at', tostring(now))
  redis.call('PEXPIRE', KEYS[2], math.ceil(burst * 1000 / rate) + 1000)
end
local id = redis.call('XADD', KEYS[1], '*', 'e', ARGV[1])
if ARGV[2] ~= '' then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
if KEYS[3] then redis.call('SET', KEYS[3], ARGV[4], 'EX', tonumber(ARGV[7])) end
return { 'accepted', id }
