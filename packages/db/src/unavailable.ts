/**
 * The error says the database cannot be reached or its session is gone, so the request may well succeed
 * later, as opposed to a query that is wrong: postgres.js' own connection errors (CONNECT_TIMEOUT,
 * CONNECTION_CLOSED, ...), a socket error (ECONNREFUSED, EPIPE, a host that does not resolve), or the
 * server's connection-exception (08), operator-intervention (57P, e.g. 57P01 on a fast shutdown) and
 * too-many-connections (53300) SQLSTATEs. Follows `cause`, since drizzle wraps the driver's errors.
 */
export function isDatabaseUnavailable(err: unknown): boolean {
  for (let e = err, depth = 0; e !== null && typeof e === "object" && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code !== "string") continue;
    if (code.startsWith("CONNECT") || code.startsWith("ECONN") || code === "EPIPE" || code === "ETIMEDOUT" || code === "EHOSTUNREACH") return true;
    if (code === "ENOTFOUND" || code === "EAI_AGAIN" || code.startsWith("08") || code.startsWith("57P") || code === "53300") return true;
  }
  return false;
}
