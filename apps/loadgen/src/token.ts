import { createHmac } from "node:crypto";

const b64url = (value: object): string => Buffer.from(JSON.stringify(value)).toString("base64url");

/** An HS256 JWT whose `sub` is `username`, valid for `ttlSeconds`: what the gateway accepts. */
export function signToken(username: string, secret: string, ttlSeconds = 3600): string {
  const now = Math.floor(Date.now() / 1000);
  const body = `${b64url({ alg: "HS256", typ: "JWT" })}.${b64url({ sub: username, iat: now, exp: now + ttlSeconds })}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}
