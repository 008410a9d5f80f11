-- Accepts one client entry (a chat message or a read receipt) into its partition's stream, atomically:
-- idempotency on the sender's client_id in this conversation, then XADD + SPUBLISH. Every key and the
-- channel carry the partition's hash tag: one slot.
-- KEYS[1] stream, KEYS[2] idempotency key of (sender, recipient, client_id) (optional)
-- ARGV[1] entry JSON, ARGV[2] shard channel ("" = publish nothing), ARGV[3] envelope to publish,
-- ARGV[4] the chat_message frame (kept under the idempotency key for retries), ARGV[5] idempotency TTL seconds
-- Returns {"accepted", stream id} | {"duplicate", original frame}
if KEYS[2] then
  local original = redis.call('GET', KEYS[2])
  if original then return { 'duplicate', original } end
end
local id = redis.call('XADD', KEYS[1], '*', 'e', ARGV[1])
if ARGV[2] ~= '' then redis.call('SPUBLISH', ARGV[2], ARGV[3]) end
if KEYS[2] then redis.call('SET', KEYS[2], ARGV[4], 'EX', tonumber(ARGV[5])) end
return { 'accepted', id }
