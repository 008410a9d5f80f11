-- A gateway's probe of one partition's shard (apps/gateway/src/partition-probe.ts): publishes on the
-- gateway's own probe channel and says which server answered, in one step on that server.
-- KEYS[1] the probe channel (a shard channel, given as the key so that the script runs on the
-- master serving its slot)
-- ARGV[1] the payload
-- Returns {subscribers that got it there, that server's run_id}
local receivers = redis.call('SPUBLISH', KEYS[1], ARGV[1])
local info = redis.call('INFO', 'server')
return { receivers, string.match(info, 'run_id:(%w+)') or '' }
