import { isValidUsername } from "@chat/protocol";
import { signToken, type TokenPolicy } from "../auth.js";
import { DEVELOPMENT_JWT_SECRET } from "../config.js";
import { ApiError, json, readBody, type ApiRequest, type ApiResponse } from "./types.js";

/** How development tokens are signed: the same secret and claims the gateway's TokenVerifier checks. */
export interface DevTokenSigning extends TokenPolicy {
  /** HS256 secret (config.jwtSecret). */
  secret: string;
}

/** Lifetime of a development token, like `npm run token`'s default: 24 h. */
export const DEV_TOKEN_TTL_SECONDS = 86_400;
/** `{"username": "..."}` never needs more; a larger body is refused without reading it all. */
const MAX_BODY_BYTES = 4096;

/** The answer of every endpoint this node does not serve: development tokens off look exactly like that. */
function notFound(): ApiError {
  return new ApiError(404, "not_found", "no such endpoint");
}

/**
 * POST /api/dev/token: `{"username": "alice"}` → `{"token": "<JWT>"}`, signed like `npm run token`
 * (HS256, `sub` = username, 24 h). Development mode with the built-in development secret only: a
 * secret given from outside (CHAT_JWT_SECRET) may be a production one, and this endpoint would mint
 * its tokens for anyone. Otherwise it answers 404 `not_found`, exactly like an unknown endpoint.
 */
export function devTokenHandler(development: boolean, signing: DevTokenSigning | undefined): (req: ApiRequest) => Promise<ApiResponse> {
  return async (req) => {
    if (!development || !signing || signing.secret !== DEVELOPMENT_JWT_SECRET) {
      req.body?.destroy();
      throw notFound();
    }
    const text = await readBody(req.body, MAX_BODY_BYTES, Number(req.headers["content-length"] ?? "0"));
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
    return json(200, { token: await signToken(signing.secret, username, DEV_TOKEN_TTL_SECONDS, signing) });
  };
}
