import { errors, jwtVerify } from "jose";
import { isValidUsername } from "@chat/protocol";

export class AuthError extends Error {
  override readonly name = "AuthError";
  constructor(
    readonly code: "token_missing" | "token_invalid" | "token_expired" | "token_subject_invalid",
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** Verifies an HS256 JWT whose `sub` is the username; nothing else is accepted (no `none`, no RS*). */
export class TokenVerifier {
  private readonly key: Uint8Array;

  constructor(secret: string) {
    this.key = new TextEncoder().encode(secret);
  }

  async verify(token: string | undefined): Promise<string> {
    if (!token) throw new AuthError("token_missing", "no token (use ?token= or Authorization: Bearer)");
    let sub: unknown;
    try {
      ({ payload: { sub } } = await jwtVerify(token, this.key, { algorithms: ["HS256"] }));
    } catch (cause) {
      if (cause instanceof errors.JWTExpired) throw new AuthError("token_expired", "token expired", { cause });
      throw new AuthError("token_invalid", "token is malformed, wrongly signed or not yet valid", { cause });
    }
    if (!isValidUsername(sub)) throw new AuthError("token_subject_invalid", "token sub is not a valid username");
    return sub;
  }
}

/** The token from `?token=` or from an `Authorization: Bearer` header. */
export function extractToken(query: string, authorization: string): string | undefined {
  const fromQuery = new URLSearchParams(query).get("token");
  if (fromQuery) return fromQuery;
  const m = /^Bearer\s+(\S+)$/i.exec(authorization.trim());
  return m?.[1];
}
