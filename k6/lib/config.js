/**
 * Run settings, from `k6 run -e NAME=value` or the environment (k6 passes it to __ENV).
 * Reading them fails the run at start-up when one is missing or not a number.
 */

/**
 * @param {string} name
 * @param {string} [fallback]
 * @returns {string}
 */
export function setting(name, fallback) {
  const value = __ENV[name];
  if (value !== undefined && value !== "") return value;
  if (fallback === undefined) throw new Error(`set ${name} (k6 run -e ${name}=...)`);
  return fallback;
}

/**
 * @param {string} name
 * @param {number} fallback
 * @returns {number}
 */
export function numberSetting(name, fallback) {
  const value = Number(setting(name, String(fallback)));
  if (!Number.isFinite(value) || value < 0) throw new Error(`${name} must be a non-negative number`);
  return value;
}

/** WebSocket base URLs: GATEWAY_URLS (comma-separated, one scenario each) or BASE_URL. */
export const gateways = setting("GATEWAY_URLS", setting("BASE_URL", "ws://127.0.0.1:8000"))
  .split(",")
  .map((u) => u.trim())
  .filter((u) => u.length > 0);

/** The cluster's CHAT_JWT_SECRET: the scripts sign their own tokens. */
export const jwtSecret = setting("CHAT_JWT_SECRET");

/** Distinguishes this run's users from earlier runs' (the database keeps their messages). */
export const runId = setting("RUN_ID", Date.now().toString(36));

export const tokenTtlSeconds = numberSetting("TOKEN_TTL_SECONDS", 86400);

/** How long a socket may take to deliver its first event before the attempt counts as failed. */
export const connectTimeoutMs = numberSetting("CONNECT_TIMEOUT_MS", 10000);

/**
 * The gateway of scenario `gateway_<i>` (scenarios.js sets GATEWAY_INDEX) and the next one, so that
 * the two users of a conversation sit on different nodes whenever there are several.
 * @returns {{ home: string, peer: string }}
 */
export function scenarioGateways() {
  const i = Number(__ENV.GATEWAY_INDEX ?? "0") % gateways.length;
  return { home: /** @type {string} */ (gateways[i]), peer: /** @type {string} */ (gateways[(i + 1) % gateways.length]) };
}
