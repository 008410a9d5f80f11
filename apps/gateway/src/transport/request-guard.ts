import type { HttpRequest, HttpResponse, TemplatedApp } from "uWebSockets.js";

/**
 * Why a request's framing cannot be trusted (RFC 9112 §6.3), or null when it can. The uWebSockets.js
 * build we depend on accepts two different Content-Length headers and frames the body by the first:
 * behind a proxy that frames by another one, the rest of the body is read as a second request
 * (request smuggling). Such a request must get a 400 and its connection must close.
 */
export function badFraming(req: HttpRequest): string | null {
  const lengths: string[] = [];
  let transferEncoding = false;
  req.forEach((key, value) => {
    if (key === "content-length") lengths.push(...value.split(",").map((v) => v.trim()));
    else if (key === "transfer-encoding") transferEncoding = true;
  });
  if (lengths.length === 0) return null;
  if (transferEncoding) return "Transfer-Encoding and Content-Length together";
  if (!lengths.every((v) => /^\d{1,15}$/.test(v))) return "Content-Length is not a number";
  if (!lengths.every((v) => Number(v) === Number(lengths[0]))) return "conflicting Content-Length headers";
  return null;
}

/**
 * Client addresses whose connection was just refused for its framing, until the end of this event
 * loop turn. uWebSockets.js parses every request already received on a connection in one go, calling
 * their handlers one after the other before anything is written (the socket is corked), and keeps
 * the connection open after `end(body, true)`: the request smuggled in the refused one's body
 * reaches a handler right after it. Handlers carry no connection identity, so the address stands in
 * for it; another connection from the same address handled in the same turn (rare: only while
 * someone sends bad framing from there) loses its request too, and reconnects.
 */
const refusedAddresses = new Set<string>();

function addressOf(res: HttpResponse): string {
  return Buffer.from(res.getRemoteAddressAsText()).toString();
}

/**
 * Answers a request with untrustworthy framing with 400 and closes its connection; a request that
 * follows it in the same read (the smuggled one) is never answered. Returns true when the request
 * was handled here, so the route must not run.
 */
export function refuseBadFraming(res: HttpResponse, req: HttpRequest): boolean {
  const reason = badFraming(req);
  if (reason === null) {
    if (refusedAddresses.size === 0 || !refusedAddresses.has(addressOf(res))) return false;
    // Probably the smuggled request. Closing now would throw away the 400, still in the cork buffer:
    // leave it unanswered and close the connection once this turn's writes went out.
    let aborted = false;
    res.onAborted(() => {
      aborted = true;
    });
    setImmediate(() => {
      if (!aborted) res.close();
    });
    return true;
  }
  const address = addressOf(res);
  res.cork(() => {
    res
      .writeStatus("400 Bad Request")
      .writeHeader("content-type", "application/json")
      .end(JSON.stringify({ error: "bad_request", message: `malformed request framing: ${reason}` }), true);
  });
  if (!refusedAddresses.has(address)) {
    refusedAddresses.add(address);
    setImmediate(() => refusedAddresses.delete(address));
  }
  return true;
}

type RouteHandler = (res: HttpResponse, req: HttpRequest) => void | Promise<void>;
const ROUTE_METHODS = new Set(["get", "post", "put", "del", "patch", "options", "head", "any", "connect", "trace"]);

/**
 * The app as route registrars see it: every HTTP handler registered through it first refuses a
 * request with bad framing. WebSocket upgrades (app.ws) call refuseBadFraming themselves.
 */
export function guardedRoutes(app: TemplatedApp): TemplatedApp {
  return new Proxy(app, {
    get(target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver) as unknown;
      if (typeof prop !== "string" || !ROUTE_METHODS.has(prop) || typeof value !== "function") return value;
      return (pattern: string, handler: RouteHandler) => {
        (value as (p: string, h: RouteHandler) => TemplatedApp).call(target, pattern, (res, req) => {
          if (!refuseBadFraming(res, req)) return handler(res, req);
        });
        return receiver as TemplatedApp;
      };
    },
  });
}
