-- SPUBLISH of many (channel, payload) pairs in one call, in order: ARGV = channel1, payload1, channel2, ...
-- Returns how many were published.
for i = 1, #ARGV, 2 do
  redis.call('SPUBLISH', ARGV[i], ARGV[i + 1])
end
return #ARGV / 2
