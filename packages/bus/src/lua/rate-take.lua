-- Takes one send from a user's token bucket, shared by every node (take_token: token-bucket.lua,
-- prepended when the script is loaded).
-- KEYS[1] the user's bucket hash
-- ARGV[1] rate per second, ARGV[2] burst
-- Returns 0 when taken, else the ms until a token is there.
return take_token(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))
