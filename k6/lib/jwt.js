/**
 * HS256 JWTs as the gateway accepts them (docs/protocol.md "Auth"), without k6 imports: the HMAC and
 * base64url functions are passed in (k6/crypto and k6/encoding in k6, node:crypto in the Node check,
 * which verifies the result with the gateway's own TokenVerifier).
 */

/**
 * @param {string} username the token's `sub`
 * @param {number} nowSeconds
 * @param {number} ttlSeconds
 */
export function tokenClaims(username, nowSeconds, ttlSeconds) {
  return { sub: username, iat: nowSeconds, exp: nowSeconds + ttlSeconds };
}

/**
 * @param {Record<string, unknown>} claims
 * @param {string} secret
 * @param {(secret: string, data: string) => string} hmacSha256Base64Url unpadded base64url of HMAC-SHA256
 * @param {(text: string) => string} base64Url unpadded base64url of the UTF-8 bytes of text
 * @returns {string}
 */
export function signHs256(claims, secret, hmacSha256Base64Url, base64Url) {
  const header = base64Url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const payload = base64Url(JSON.stringify(claims));
  return `${header}.${payload}.${hmacSha256Base64Url(secret, `${header}.${payload}`)}`;
}
