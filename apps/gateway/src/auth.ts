import { SignJWT, errors, jwtVerify } from "jose";
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

export interface VerifiedToken {
  username: string;
  /** When the token stops being valid (its `exp`), or null when it has none. */
  expiresAt: Date | null;
}

export interface TokenPolicy {
  /** Required `aud`, when set. */
  audience?: string | undefined;
  /** Required `iss`, when set. */
  issuer?: string | undefined;
  /** Accept tokens without `exp` (CHAT_JWT_ALLOW_NO_EXP); refused by default, since they never expire. */
  allowNoExp?: boolean | undefined;
}

/** An `iat` further in the future than this (clock skew between the issuer and us) is refused. */
export const MAX_IAT_SKEW_SECONDS = 60;

/** Verifies an HS256 JWT whose `sub` is the username; nothing else is accepted (no `none`, no RS*). */
export class TokenVerifier {
  private readonly key: Uint8Array;

  constructor(
    secret: string,
    private readonly policy: TokenPolicy = {},
  ) {
    this.key = new TextEncoder().encode(secret);
  }

  async verifyToken(token: string | undefined): Promise<VerifiedToken> {
    if (!token) throw new AuthError("token_missing", "no token (use ?token= or Authorization: Bearer)");
    let payload: { sub?: unknown; exp?: unknown; iat?: unknown };
    try {
      ({ payload } = await jwtVerify(token, this.key, {
        algorithms: ["HS256"],
        ...(this.policy.allowNoExp ? {} : { requiredClaims: ["exp"] }),
        ...(this.policy.audience ? { audience: this.policy.audience } : {}),
        ...(this.policy.issuer ? { issuer: this.policy.issuer } : {}),
      }));
    } catch (cause) {
      if (cause instanceof errors.JWTExpired) throw new AuthError("token_expired", "token expired", { cause });
      if (cause instanceof errors.JWTClaimValidationFailed) {
        if (cause.claim === "exp" && cause.reason === "missing") {
          throw new AuthError("token_invalid", "token has no exp (expiry); tokens must expire", { cause });
        }
        throw new AuthError("token_invalid", `token claim ${cause.claim} is not accepted`, { cause });
      }
      throw new AuthError("token_invalid", "token is malformed, wrongly signed or not yet valid", { cause });
    }
    // jose checks iat only against a maximum age: a token "issued" in the future would outlive its exp's intent.
    if (typeof payload.iat === "number" && payload.iat > Date.now() / 1000 + MAX_IAT_SKEW_SECONDS) {
      throw new AuthError("token_invalid", "token iat (issued at) is in the future");
    }
    if (!isValidUsername(payload.sub)) throw new AuthError("token_subject_invalid", "token sub is not a valid username");
    return { username: payload.sub, expiresAt: typeof payload.exp === "number" ? new Date(payload.exp * 1000) : null };
  }

  async verify(token: string | undefined): Promise<string> {
    return (await this.verifyToken(token)).username;
  }
}

/** The token from `?token=` or from an `Authorization: Bearer` header. */
export function extractToken(query: string, authorization: string): string | undefined {
  const fromQuery = new URLSearchParams(query).get("token");
  if (fromQuery) return fromQuery;
  const m = /^Bearer\s+(\S+)$/i.exec(authorization.trim());
  return m?.[1];
}

/**
 * Signs a client token the gateway accepts: HS256, `sub` = username, expiring after ttlSeconds,
 * with `aud`/`iss` when the verifier's policy requires them. For `npm run token` and the
 * development sign-in endpoint; production tokens come from the deployment's identity provider.
 */
export function signToken(secret: string, username: string, ttlSeconds: number, policy: TokenPolicy = {}): Promise<string> {
  const jwt = new SignJWT({}).setProtectedHeader({ alg: "HS256", typ: "JWT" }).setSubject(username).setIssuedAt().setExpirationTime(`${ttlSeconds}s`);
  if (policy.audience) jwt.setAudience(policy.audience);
  if (policy.issuer) jwt.setIssuer(policy.issuer);
  return jwt.sign(new TextEncoder().encode(secret));
}
