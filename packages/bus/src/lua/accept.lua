-- Accepts one client entry (a chat message or a read receipt) into its partition's stream, atomically:
-- idempotency on the sender's client_id in this conversation, then XADD + SPUBLISH. Every key and the
-- channel carry the partition's hash tag: one slot. On a single Redis (no slots) the sender's rate
-- bucket may come too, as the last key: one round trip instead of two (take_token: token-bucket.lua,
-- prepended when the script is loaded).
-- KEYS[1] stream, KEYS[2] idempotency key of (sender, recipient, client_id) (optional),
-- then the sender's rate bucket (only with ARGV[6])
-- ARGV[1] entry JSON, ARGV[2] shard channel ("" = publish nothing), ARGV[3] envelope to publish,
-- ARGV[4] the chat_message frame (kept under the idempotency key for retries), ARGV[5] idempotency TTL seconds,
-- ARGV[6] rate per second and ARGV[7] burst of the sender's bucket (optional)
-- Returns {"accepted", stream id} | {"duplicate", original frame} | {"rate_limited", ms until a token}
local idempotency = KEYS[2]
if ARGV[6] then
  if #KEYS == 2 then idempotency = nil end
  local wait = take_token(KEYS[#KEYS], tonumber(ARGV[6]), tonumber(ARGV[7]))
  if wait > 0 then return { 'rate_limited', tostring(wait) } end
end
if idempotency then
  local original = redis.call('GET', idempotency)
  if original then return { 'duplicate', original } end
end
local id = redis.call('XADD', KEYS[1], '*', 'e', ARGV[1])
if ARGV[2] ~= '' then redis.call('SPUBLISH', ARGV[2], ARGV[3]) end
if idempotency then redis.call('SET', idempotency, ARGV[4], 'EX', tonumber(ARGV[5])) end
return { 'accepted', id }
