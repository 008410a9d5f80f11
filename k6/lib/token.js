import { hmac } from "k6/crypto";
import { b64encode } from "k6/encoding";
import { jwtSecret, tokenTtlSeconds } from "./config.js";
import { signHs256, tokenClaims } from "./jwt.js";

/**
 * An HS256 token for `username`, signed inside k6 with CHAT_JWT_SECRET.
 * @param {string} username
 * @returns {string}
 */
export function tokenFor(username) {
  return signHs256(
    tokenClaims(username, Math.floor(Date.now() / 1000), tokenTtlSeconds),
    jwtSecret,
    (secret, data) => hmac("sha256", secret, data, "base64rawurl"),
    (text) => b64encode(text, "rawurl"),
  );
}
