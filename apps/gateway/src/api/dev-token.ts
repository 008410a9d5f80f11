import type { Readable } from "node:stream";
import { SignJWT } from "jose";
import { isValidUsername } from "@chat/protocol";
import { ApiError, json, type ApiRequest, type ApiResponse } from "./types.js";

/** How development tokens are signed: the same secret and claims the gateway's TokenVerifier checks. */
export interface DevTokenSigning {
  /** HS256 secret (config.jwtSecret). */
  secret: string;
  /** `aud` to set, when the verifier requires one (config.jwtAudience). */
  audience?: string | undefined;
  /** `iss` to set, when the verifier requires one (config.jwtIssuer). */
  issuer?: string | undefined;
}

/** Lifetime of a development token, like `npm run token`'s default: 24 h. */
export const DEV_TOKEN_TTL_SECONDS = 86_400;
/** `{"username": "..."}` never needs more; a larger body is refused without reading it all. */
const MAX_BODY_BYTES = 4096;

/** The answer of every endpoint this node does not serve: development tokens off look exactly like that. */
function notFound(): ApiError {
  return new ApiError(404, "not_found", "no such endpoint");
}

async function readBody(body: Readable | undefined, declaredLength: number): Promise<string> {
  const tooLarge = () => new ApiError(413, "body_too_large", `send at most ${MAX_BODY_BYTES} bytes`);
  if (declaredLength > MAX_BODY_BYTES) throw tooLarge();
  if (!body) return "";
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) {
      body.destroy();
      throw tooLarge();
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString("utf8");
}

/**
 * POST /api/dev/token: `{"username": "alice"}` → `{"token": "<JWT>"}`, signed like `npm run token`
 * (HS256, `sub` = username, 24 h). Development mode only: otherwise (or without signing settings)
 * it answers 404 `not_found`, exactly like an unknown endpoint, so production reveals nothing.
 */
export function devTokenHandler(development: boolean, signing: DevTokenSigning | undefined): (req: ApiRequest) => Promise<ApiResponse> {
  const key = signing ? new TextEncoder().encode(signing.secret) : null;
  return async (req) => {
    if (!development || !signing || !key) {
      req.body?.destroy();
      throw notFound();
    }
    const text = await readBody(req.body, Number(req.headers["content-length"] ?? "0"));
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch (cause) {
      throw new ApiError(400, "bad_body", 'send JSON: {"username": "<name>"}', { cause });
    }
    const username = typeof parsed === "object" && parsed !== null ? (parsed as Record<string, unknown>)["username"] : undefined;
    if (!isValidUsername(username)) {
      throw new ApiError(400, "bad_username", "username must be 1-150 letters, digits and @.+-_ (not a reserved name)");
    }
    const jwt = new SignJWT({}).setProtectedHeader({ alg: "HS256", typ: "JWT" }).setSubject(username).setIssuedAt().setExpirationTime(`${DEV_TOKEN_TTL_SECONDS}s`);
    if (signing.audience) jwt.setAudience(signing.audience);
    if (signing.issuer) jwt.setIssuer(signing.issuer);
    return json(200, { token: await jwt.sign(key) });
  };
}
