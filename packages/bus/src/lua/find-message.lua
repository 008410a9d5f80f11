-- Looks for one message's entry among a window of stream entries and sends back only that entry,
-- so a lookup costs the gateway nothing however large the other entries are. One page per call:
-- the caller pages on with the returned id, up to its own bound, so Redis is never held long.
-- KEYS[1] stream
-- ARGV[1] first id of the page (inclusive, or "(<id>" exclusive), ARGV[2] last id of the window (inclusive),
-- ARGV[3] entries to look at in this call, ARGV[4] how an entry of the message begins (see entryPrefixOf)
-- Returns {"found", stream id, entry} | {"more", last id looked at} | {"none"}
local count = tonumber(ARGV[3])
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', count)
local prefix = ARGV[4]
local n = #prefix
for _, e in ipairs(entries) do
  local fields = e[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'e' and string.sub(fields[i + 1], 1, n) == prefix then return { 'found', e[1], fields[i + 1] } end
  end
end
if #entries < count then return { 'none' } end
return { 'more', entries[#entries][1] }
