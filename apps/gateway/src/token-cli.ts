import { isValidUsername } from "@chat/protocol";
import { signToken } from "./auth.js";
import { DEVELOPMENT_JWT_SECRET } from "./config.js";

// Prints a token for `npm run token -- <username> [ttl seconds]`, signed with CHAT_JWT_SECRET or the
// development secret that `npm start` uses, and nothing else on stdout.
const [username, ttl = "86400"] = process.argv.slice(2);
if (!isValidUsername(username)) {
  process.stderr.write("token: usage: npm run token -- <username> [ttl seconds] (username: 1-150 of letters, digits, @.+-_)\n");
  process.exit(2);
}
if (!/^[1-9]\d*$/.test(ttl)) {
  process.stderr.write(`token: the lifetime must be a whole number of seconds, got "${ttl}": npm run token -- <username> [ttl seconds]\n`);
  process.exit(2);
}
const secret = process.env["CHAT_JWT_SECRET"] || DEVELOPMENT_JWT_SECRET;
const token = await signToken(secret, username, Number(ttl));
process.stdout.write(token + "\n");
