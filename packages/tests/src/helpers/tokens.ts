import { SignJWT } from "jose";
import { JWT_SECRET } from "./env.js";

export interface TokenOptions {
  secret?: string;
  expiresInSeconds?: number;
  notBeforeSeconds?: number;
  alg?: "HS256" | "HS384" | "HS512";
}

export async function tokenFor(username: string | undefined, options: TokenOptions = {}): Promise<string> {
  const jwt = new SignJWT({}).setProtectedHeader({ alg: options.alg ?? "HS256", typ: "JWT" }).setIssuedAt();
  if (username !== undefined) jwt.setSubject(username);
  const now = Math.floor(Date.now() / 1000);
  jwt.setExpirationTime(now + (options.expiresInSeconds ?? 3600));
  if (options.notBeforeSeconds !== undefined) jwt.setNotBefore(now + options.notBeforeSeconds);
  return jwt.sign(new TextEncoder().encode(options.secret ?? JWT_SECRET));
}

/** An unsigned token (`alg: none`), which must never be accepted. */
export function unsignedToken(username: string): string {
  const b64 = (o: object) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${b64({ alg: "none", typ: "JWT" })}.${b64({ sub: username, exp: Math.floor(Date.now() / 1000) + 3600 })}.`;
}
