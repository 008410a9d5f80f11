import { SignJWT } from "jose";
import { JWT_SECRET } from "./env.js";

export interface TokenOptions {
  secret?: string;
  expiresInSeconds?: number;
  notBeforeSeconds?: number;
  alg?: "HS256" | "HS384" | "HS512";
  /** Leave `exp` out (refused unless CHAT_JWT_ALLOW_NO_EXP=true). */
  noExp?: boolean;
  /** `iat` this many seconds from now instead of now. */
  issuedAtOffsetSeconds?: number;
}

export async function tokenFor(username: string | undefined, options: TokenOptions = {}): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  const jwt = new SignJWT({}).setProtectedHeader({ alg: options.alg ?? "HS256", typ: "JWT" }).setIssuedAt(now + (options.issuedAtOffsetSeconds ?? 0));
  if (username !== undefined) jwt.setSubject(username);
  if (!options.noExp) jwt.setExpirationTime(now + (options.expiresInSeconds ?? 3600));
  if (options.notBeforeSeconds !== undefined) jwt.setNotBefore(now + options.notBeforeSeconds);
  return jwt.sign(new TextEncoder().encode(options.secret ?? JWT_SECRET));
}

/** An unsigned token (`alg: none`), which must never be accepted. */
export function unsignedToken(username: string): string {
  const b64 = (o: object) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${b64({ alg: "none", typ: "JWT" })}.${b64({ sub: username, exp: Math.floor(Date.now() / 1000) + 3600 })}.`;
}

/**
 * The gateway's built-in development secret (apps/gateway/src/config.ts): what a development-mode
 * gateway without CHAT_JWT_SECRET signs and accepts, and the only one its sign-in endpoint uses.
 */
export const DEVELOPMENT_JWT_SECRET = "chat-cluster-development-secret-never-use-in-production";
