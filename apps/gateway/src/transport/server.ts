import type { HttpRequest, HttpResponse, TemplatedApp, us_listen_socket, us_socket_context_t, WebSocket } from "uWebSockets.js";
import { groupConversation, type ConnectionCounter, type CountedConnection } from "@chat/bus";
import { CloseCode, ErrorCode, UpgradeRefusal, clientIdOf } from "@chat/protocol";
import { AuthError, extractToken, type TokenVerifier, type VerifiedToken } from "../auth.js";
import { UpgradeLimiter } from "./upgrade-limiter.js";
import type { Logger } from "@chat/log";
import type { GatewayMetrics } from "../metrics.js";
import { parseWebSocketPath, type Endpoint } from "../routes.js";
import { ChatSession } from "../sessions/chat-session.js";
import type { GatewayCore } from "../sessions/core.js";
import { NotificationSession } from "../sessions/notification-session.js";
import type { Session, SessionSocket } from "../sessions/socket.js";
import type { HttpApi } from "../api/http-api.js";
import { registerApiRoutes } from "./http.js";
import { guardedRoutes, refuseBadFraming } from "./request-guard.js";
import { registerStaticFiles } from "./static-files.js";
import { loadNativeUws } from "./uws.js";
import { StartupError, portProblem } from "@chat/config";
import { createServer } from "node:net";

const uws = loadNativeUws();

interface SocketData {
  username: string;
  endpoint: Endpoint;
  since: string | undefined;
  /** `?presence=1` on /ws/notifications/: the client wants its partners' presence events. */
  presence: boolean;
  /** When the token expires (epoch ms), or 0 for a token without `exp`. */
  expiresAtMs: number;
  /** This socket's entry in its user's cluster-wide socket count, once taken. */
  counted: CountedConnection | null;
  session: Session | null;
  closed: boolean;
}

/** A session's view of its socket: a class, not two closures per socket (idle sockets are most of a node's memory). */
class UwsSessionSocket implements SessionSocket {
  constructor(
    private readonly ws: WebSocket<SocketData>,
    private readonly data: SocketData,
  ) {}

  send(frame: string | Buffer): void {
    if (!this.data.closed) this.ws.cork(() => void this.ws.send(frame, false, false));
  }

  sendAll(frames: readonly (string | Buffer)[]): void {
    if (this.data.closed || frames.length === 0) return;
    // Inside the cork uWebSockets.js still writes out each full cork buffer, and past maxBackpressure
    // it drops the frame (DROPPED) and closes the socket later, not during this loop: a long replay
    // to a socket that does not read is cut at the limit, not buffered whole (measured: 3,000 frames
    // of 4 KB to a paused client, 68 KB buffered at most, 1,930 dropped, then closed with 1006).
    this.ws.cork(() => {
      for (const frame of frames) this.ws.send(frame, false, false);
    });
  }

  close(code: number, reason: string): void {
    if (!this.data.closed) this.ws.end(code, reason);
  }
}

/** How often sockets are checked for an expired token: a token is honoured at most this long past `exp`. */
const EXPIRY_SWEEP_MS = 1000;

export interface ServerOptions {
  host: string;
  port: number;
  /** A separate port for /metrics (then not served on `port`); null serves it on `port`. */
  metricsPort?: number | null | undefined;
  /** Address of the metrics port (default: host). */
  metricsHost?: string | undefined;
  /** Origins that may open sockets besides the page's own; "*" allows any. */
  allowedOrigins: readonly string[];
  upgradesPerIpPerSecond: number;
  maxFrameBytes: number;
  maxBackpressureBytes: number;
  idleTimeoutSeconds: number;
}

/** Decides whether this node takes new sockets (bus up, not draining). */
export interface Readiness {
  ready(): boolean;
  /** What a ready node does not serve (shown on /readyz, which still answers 200); null when everything. */
  detail?(): string | null;
}

const STATUS_TEXT: Record<number, string> = {
  400: "400 Bad Request", 401: "401 Unauthorized", 403: "403 Forbidden", 404: "404 Not Found", 429: "429 Too Many Requests", 503: "503 Service Unavailable",
};

/**
 * Whether a browser page at `origin` may open a socket on the host it addressed (`host`, the Host
 * header): its own origin always, another one only when listed. Requests without Origin come from
 * native clients, which a cross-site page cannot impersonate, and pass.
 */
export function originAllowed(origin: string, host: string, allowed: readonly string[]): boolean {
  if (!origin || allowed.includes("*") || allowed.includes(origin)) return true;
  try {
    const page = new URL(origin);
    return host !== "" && page.host === new URL(`${page.protocol}//${host}`).host;
  } catch {
    return false; // "null" (sandboxed frames, file: pages) and garbage
  }
}

/**
 * The native module exports this constant (1); its types only declare the ListenOptions enum, which
 * is no value at run time.
 */
const LIBUS_LISTEN_EXCLUSIVE_PORT = (uws as unknown as { LIBUS_LISTEN_EXCLUSIVE_PORT: number }).LIBUS_LISTEN_EXCLUSIVE_PORT;

/** Listens exclusively (no SO_REUSEPORT: a second process on a port in use must fail, not share it). */
function listenExclusive(app: TemplatedApp, host: string, port: number, portSetting: string): Promise<us_listen_socket> {
  return new Promise((resolve, reject) => {
    // The package's types lack the (host, port, options, cb) form its native binding takes.
    const listen = app.listen as unknown as (h: string, p: number, o: number, cb: (s: us_listen_socket | false) => void) => void;
    listen.call(app, host, port, LIBUS_LISTEN_EXCLUSIVE_PORT, (socket) => {
      if (socket) return resolve(socket);
      // uWebSockets.js says only "no": ask the kernel why, through a Node server on the same address.
      const probe = createServer();
      probe.once("error", (err: NodeJS.ErrnoException) => reject(new StartupError(portProblem(err.code, host, port, portSetting))));
      probe.listen({ host, port, exclusive: true }, () => probe.close(() => reject(new StartupError(portProblem(undefined, host, port, portSetting)))));
    });
  });
}

function refuse(res: HttpResponse, status: number, code: string, message: string, metrics?: GatewayMetrics): void {
  metrics?.upgradesRefused.inc({ status: String(status) });
  res.cork(() => {
    res
      .writeStatus(STATUS_TEXT[status] ?? `${status} Error`)
      .writeHeader("content-type", "application/json")
      .end(JSON.stringify({ error: code, message }));
  });
}

/** The only module that touches uWebSockets.js: HTTP upgrades, sockets, and the health endpoints. */
export class GatewayServer {
  private readonly app: TemplatedApp;
  private listenSocket: us_listen_socket | null = null;
  /** The metrics port's app, when CHAT_METRICS_PORT separates it from the API. */
  private metricsApp: TemplatedApp | null = null;
  private metricsSocket: us_listen_socket | null = null;
  /** Open sockets with their data, so the expiry sweep reads it without a native call per socket. */
  private readonly sockets = new Map<WebSocket<SocketData>, SocketData>();
  private expirySweep: NodeJS.Timeout | null = null;
  private allClosed: (() => void) | null = null;
  private readonly upgradeLimiter: UpgradeLimiter | null;
  /** Open sockets per user on this node: the part of the per-user limit decided at the upgrade. */
  private readonly localSockets = new Map<string, number>();

  constructor(
    private readonly core: GatewayCore,
    private readonly verifier: TokenVerifier,
    private readonly readiness: Readiness,
    private readonly options: ServerOptions,
    private readonly log: Logger,
    private readonly metrics: GatewayMetrics,
    api: HttpApi,
    /** Cluster-wide sockets per user: the limit, and who is online. */
    private readonly connections: ConnectionCounter,
  ) {
    this.upgradeLimiter = options.upgradesPerIpPerSecond > 0 ? new UpgradeLimiter(options.upgradesPerIpPerSecond) : null;
    this.app = uws.App();
    this.app.ws<SocketData>("/ws/*", {
      maxPayloadLength: options.maxFrameBytes * 16,
      maxBackpressure: options.maxBackpressureBytes,
      closeOnBackpressureLimit: 1,
      idleTimeout: options.idleTimeoutSeconds,
      sendPingsAutomatically: true,
      compression: uws.DISABLED,
      upgrade: (res, req, context) => this.upgrade(res, req, context),
      open: (ws) => this.open(ws),
      message: (ws, message, isBinary) => this.message(ws, message, isBinary),
      close: (ws, code) => this.closed(ws, code),
    });
    // Every HTTP route refuses a request with untrustworthy framing first (request-guard.ts).
    const routes = guardedRoutes(this.app);
    routes.get("/healthz", (res) => void res.end("ok"));
    routes.get("/readyz", (res) => {
      if (this.readiness.ready()) {
        // Still 200 when some partitions are down: the node serves every other conversation.
        const detail = this.readiness.detail?.() ?? null;
        res.end(detail === null ? "ready" : `ready; ${detail}`);
      }
      else refuse(res, 503, "not_ready", "message bus unreachable or draining");
    });
    if (options.metricsPort === null || options.metricsPort === undefined) {
      routes.get("/metrics", (res) => this.serveMetrics(res));
    } else {
      this.metricsApp = uws.App();
      const metricsRoutes = guardedRoutes(this.metricsApp);
      metricsRoutes.get("/metrics", (res) => this.serveMetrics(res));
      metricsRoutes.any("/*", (res) => refuse(res, 404, "not_found", "no such endpoint"));
    }
    registerApiRoutes(routes, api);
    registerStaticFiles(routes, log);
    routes.any("/*", (res) => refuse(res, 404, "not_found", "no such endpoint"));
  }

  private serveMetrics(res: HttpResponse): void {
    let aborted = false;
    res.onAborted(() => {
      aborted = true;
    });
    void this.metrics.registry.metrics().then((body) => {
      if (aborted) return;
      res.cork(() => res.writeHeader("content-type", this.metrics.registry.contentType).end(body));
    });
  }

  /**
   * Listens on the port (and the metrics port, when separate); resolves to the port. Rejects with a
   * StartupError naming the port and its setting when the address is taken or not this machine's.
   */
  async listen(): Promise<number> {
    const socket = await listenExclusive(this.app, this.options.host, this.options.port, "PORT");
    this.listenSocket = socket;
    if (this.metricsApp) {
      try {
        this.metricsSocket = await listenExclusive(this.metricsApp, this.options.metricsHost ?? this.options.host, this.options.metricsPort!, "CHAT_METRICS_PORT");
      } catch (err) {
        this.stopListening();
        throw err;
      }
    }
    this.expirySweep = setInterval(() => this.closeExpired(), EXPIRY_SWEEP_MS);
    this.expirySweep.unref();
    return uws.us_socket_local_port(socket);
  }

  /** The separate metrics port once listening, or null when /metrics is served on the main port. */
  get metricsPort(): number | null {
    return this.metricsSocket ? uws.us_socket_local_port(this.metricsSocket) : null;
  }

  /** Stops accepting connections; open sockets stay until closeAll. */
  stopListening(): void {
    if (this.expirySweep) clearInterval(this.expirySweep);
    this.expirySweep = null;
    if (this.listenSocket) uws.us_listen_socket_close(this.listenSocket);
    this.listenSocket = null;
    if (this.metricsSocket) uws.us_listen_socket_close(this.metricsSocket);
    this.metricsSocket = null;
  }

  get socketCount(): number {
    return this.sockets.size;
  }

  /**
   * Closes every socket with `code`, spread evenly over `windowMs` so that their clients do not all
   * reconnect to the other nodes at the same instant. Resolves once all are closed.
   */
  async closeGradually(code: number, reason: string, windowMs: number): Promise<void> {
    const sockets = [...this.sockets.keys()];
    if (sockets.length === 0) return;
    const done = new Promise<void>((resolve) => (this.allClosed = resolve));
    const n = sockets.length;
    const ticks = Math.max(1, Math.min(n, Math.floor(windowMs / 50)));
    const interval = windowMs / ticks;
    const startedAt = Date.now();
    // Tick k (at about (k-1) x interval) closes k/ticks of the sockets, or more when timers fire late
    // on a busy event loop, so the drain never stretches past its window.
    let closed = 0;
    for (let tick = 1; closed < n; tick++) {
      const elapsed = Date.now() - startedAt;
      const due = Math.min(n, Math.max(Math.ceil((n * tick) / ticks), Math.ceil((n * elapsed) / windowMs)));
      for (; closed < due; closed++) {
        const ws = sockets[closed]!;
        if (!ws.getUserData().closed) ws.end(code, reason);
      }
      if (closed < n) await new Promise((r) => setTimeout(r, Math.max(0, startedAt + tick * interval - Date.now())));
    }
    if (this.sockets.size > 0) await done;
  }

  private upgrade(res: HttpResponse, req: HttpRequest, context: us_socket_context_t): void {
    if (refuseBadFraming(res, req)) return;
    // The request object dies at the first await: copy everything now.
    const url = req.getUrl();
    const query = req.getQuery() ?? "";
    const key = req.getHeader("sec-websocket-key");
    const protocol = req.getHeader("sec-websocket-protocol");
    const extensions = req.getHeader("sec-websocket-extensions");
    const authorization = req.getHeader("authorization");
    const origin = req.getHeader("origin");
    const host = req.getHeader("host");
    let aborted = false;
    res.onAborted(() => {
      aborted = true;
    });
    const refuseWith = (status: number, code: string, message: string) => refuse(res, status, code, message, this.metrics);
    if (!this.readiness.ready()) return refuseWith(UpgradeRefusal.unavailable, "unavailable", "node not ready; try another");
    // Browsers always send Origin; native clients send none and are not what the check guards against.
    if (!originAllowed(origin, host, this.options.allowedOrigins)) {
      return refuseWith(UpgradeRefusal.forbidden_origin, "forbidden_origin", "this Origin may not open sockets here");
    }
    if (this.upgradeLimiter && !this.upgradeLimiter.take(Buffer.from(res.getRemoteAddressAsText()).toString())) {
      return refuseWith(UpgradeRefusal.too_many, "too_many_upgrades", "too many connection attempts from this address");
    }
    const route = parseWebSocketPath(url);
    if (!route.ok) return refuseWith(UpgradeRefusal.bad_request, "bad_path", route.reason);
    const params = new URLSearchParams(query);
    const since = params.get("since") || undefined;
    if (since !== undefined && ((route.endpoint.kind !== "chat" && route.endpoint.kind !== "group-chat") || !/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(since))) {
      return refuseWith(UpgradeRefusal.bad_request, "bad_since", "since must be a message id, on a chat socket");
    }
    // Opt-in: clients written against the seed protocol see on this socket only the events they know.
    const presenceParam = params.get("presence");
    if (presenceParam !== null && (route.endpoint.kind !== "notifications" || presenceParam !== "1")) {
      return refuseWith(UpgradeRefusal.bad_request, "bad_presence", "presence=1 is the only value, on /ws/notifications/ only");
    }
    const presence = presenceParam === "1";
    // Nothing here waits for I/O, so that the upgrade happens inside this handler's call, corked by
    // uWebSockets.js itself. The token check is a promise that settles in the same microtask drain
    // (HMAC only), which node runs before this callback returns to uWebSockets.js. An upgrade after
    // real I/O is what this uWebSockets.js build gets wrong: res.cork() after the upgrade runs the
    // HTTP response's end-of-request check on the fresh WebSocket when the upgrade kept the socket's
    // address, reads the WebSocket's bytes as HTTP state and, when they happen to have the
    // connection-close bit, shuts the socket down (the client sees 1006 before any event; every time
    // for a request that says `Connection: close`, socket-setup.test.ts). Upgrading uncorked instead
    // loses the 101 and crashes the process. Fixed upstream (uWebSockets "Fix cork() closing a
    // WebSocket that was upgraded asynchronously"), in no build for this glibc. So the cluster-wide
    // socket count, a Redis call, is taken once the socket is open (open below).
    void this.authorize(query, authorization, route.endpoint, since, presence, url).then((outcome) => {
      if (aborted) return;
      if ("refusal" in outcome) return refuseWith(outcome.refusal[0], outcome.refusal[1], outcome.refusal[2]);
      res.cork(() => res.upgrade(outcome.data, key, protocol, extensions, context));
    });
  }

  /** The checks that need the user: token, path rules, this node's share of the per-user socket limit. */
  private async authorize(
    query: string,
    authorization: string,
    endpoint: Endpoint,
    since: string | undefined,
    presence: boolean,
    url: string,
  ): Promise<{ data: SocketData } | { refusal: [number, string, string] }> {
    let token: VerifiedToken;
    try {
      token = await this.verifier.verifyToken(extractToken(query, authorization));
    } catch (err) {
      const code = err instanceof AuthError ? err.code : "token_invalid";
      this.log.info({ code, path: url }, "upgrade refused: unauthorized");
      return { refusal: [UpgradeRefusal.unauthorized, code, err instanceof AuthError ? err.message : "invalid token"] };
    }
    const { username } = token;
    if ((endpoint.kind === "chat" || endpoint.kind === "conversation-notifications") && endpoint.other === username) {
      return { refusal: [UpgradeRefusal.bad_request, "bad_path", "cannot open a conversation with yourself"] };
    }
    if ((this.localSockets.get(username) ?? 0) >= this.connections.limit) {
      this.log.info({ user: username, limit: this.connections.limit }, "upgrade refused: too many sockets");
      return { refusal: [UpgradeRefusal.too_many, "too_many_connections", `at most ${this.connections.limit} open sockets per user`] };
    }
    if (!this.readiness.ready()) return { refusal: [UpgradeRefusal.unavailable, "unavailable", "node not ready; try another"] };
    return { data: { username, endpoint, since, presence, expiresAtMs: token.expiresAt?.getTime() ?? 0, counted: null, session: null, closed: false } };
  }

  private open(ws: WebSocket<SocketData>): void {
    const data = ws.getUserData();
    this.sockets.set(ws, data);
    this.localSockets.set(data.username, (this.localSockets.get(data.username) ?? 0) + 1);
    this.metrics.openSockets.inc({ endpoint: data.endpoint.kind });
    const socket = new UwsSessionSocket(ws, data);
    const endpoint = data.endpoint;
    data.session = this.session(endpoint, socket, data);
    // Not inside this handler: uWebSockets.js calls it from within res.upgrade, and a session set-up
    // run there (a channel registered with the router, which subscribes on Redis) made the build we
    // use (20.30 unofficial) end the fresh socket at once without a close frame (1006), for some
    // lengths of the names involved and not others: reproducible with a fixed prefix and pair of
    // users, and gone when the set-up runs after the handler returned. A microtask runs before any
    // frame of the socket can arrive (uWebSockets.js callbacks are macrotasks).
    const session = data.session;
    queueMicrotask(() => {
      // The cluster-wide count runs beside the subscription; the session shows nothing (no presence,
      // no event) before it: a socket over the limit is closed with 4029 before it shows anywhere.
      const admitted = data.closed ? undefined : this.countConnection(ws, data);
      void session.start(admitted);
    });
  }

  private session(endpoint: Endpoint, socket: SessionSocket, data: SocketData): Session {
    switch (endpoint.kind) {
      case "chat":
        return new ChatSession(this.core, socket, data.username, { kind: "direct", other: endpoint.other }, data.since);
      case "group-chat":
        return new ChatSession(this.core, socket, data.username, { kind: "group", id: endpoint.group }, data.since);
      case "notifications":
        return new NotificationSession(this.core, socket, data.username, undefined, data.presence);
      case "conversation-notifications":
        return new NotificationSession(this.core, socket, data.username, endpoint.other);
      case "group-notifications":
        return new NotificationSession(this.core, socket, data.username, groupConversation(endpoint.group));
    }
  }

  /** Takes the socket's place in its user's cluster-wide count; false when it was refused (the socket is closed). */
  private countConnection(ws: WebSocket<SocketData>, data: SocketData): Promise<boolean> {
    const connections = this.connections;
    return connections.acquire(data.username, `${this.core.nodeId}:${this.core.nextSocketSeq()}`).then(
      (counted) => {
        if (data.closed) {
          // Closed meanwhile (by its client, or by the set-up bound): give the place back.
          if (counted) this.core.track(connections.release(counted).catch((err: unknown) => this.log.warn({ err }, "connection release failed")));
          return false;
        }
        if (!counted) {
          this.log.info({ user: data.username, limit: connections.limit }, "socket refused: too many sockets");
          ws.end(CloseCode.too_many_connections, `too_many_connections: at most ${connections.limit} open sockets per user`);
          return false;
        }
        data.counted = counted;
        this.core.countedConnections.add(counted);
        return true;
      },
      (err: unknown) => {
        this.log.warn({ err, user: data.username }, "connection count failed");
        if (!data.closed) ws.end(CloseCode.try_again_later, "node not ready; reconnect");
        return false;
      },
    );
  }

  /**
   * Closes (4001) the sockets whose token has expired. One sweep for the node instead of a timer
   * per socket: a timer and its closure cost about as much memory as the rest of an idle socket's
   * JavaScript state.
   */
  private closeExpired(): void {
    const now = Date.now();
    // forEach, not for-of over entries: this runs every second over every socket, and each entry
    // would be a fresh [ws, data] array (allocation sampling showed them, 10,000 per second at 10,000 sockets).
    this.sockets.forEach((data, ws) => {
      if (data.expiresAtMs > 0 && data.expiresAtMs <= now && !data.closed) ws.end(CloseCode.token_expired, "token expired, reconnect with a new one");
    });
  }

  private message(ws: WebSocket<SocketData>, message: ArrayBuffer, isBinary: boolean): void {
    const data = ws.getUserData();
    const send = (code: ErrorCode, text: string, clientId?: string): void => {
      this.metrics.framesRejected.inc({ reason: code });
      const error = clientId === undefined ? { type: "error", code, message: text } : { type: "error", code, message: text, client_id: clientId };
      ws.send(JSON.stringify(error), false, false);
    };
    if (isBinary) return send(ErrorCode.binary_not_supported, "binary frames are not supported; send JSON text");
    if (message.byteLength > this.options.maxFrameBytes) {
      // Bounded by maxPayloadLength; parsed only to echo the client_id on this error path.
      const clientId = clientIdOf(Buffer.from(message).toString("utf8"));
      return send(ErrorCode.frame_too_large, `frame is larger than ${this.options.maxFrameBytes} bytes`, clientId);
    }
    // The ArrayBuffer is only valid during this callback: decode it now.
    data.session?.receive(Buffer.from(message).toString("utf8"));
  }

  private closed(ws: WebSocket<SocketData>, code: number): void {
    const data = ws.getUserData();
    data.closed = true;
    // A socket dropped (no close frame) before its first event: rare, and worth a line with what
    // it was (the drops found so far were the server's, not the client's; see socket-setup.test.ts).
    if (code === 1006 && data.session && !data.session.greeted) {
      this.log.info({ user: data.username, endpoint: data.endpoint.kind }, "socket dropped before its first event");
    }
    if (data.counted) {
      this.core.countedConnections.delete(data.counted);
      this.core.track(this.connections.release(data.counted).catch((err: unknown) => this.log.warn({ err }, "connection release failed")));
    }
    this.sockets.delete(ws);
    const local = (this.localSockets.get(data.username) ?? 1) - 1;
    if (local > 0) this.localSockets.set(data.username, local);
    else this.localSockets.delete(data.username);
    this.metrics.openSockets.dec({ endpoint: data.endpoint.kind });
    data.session?.stop();
    if (this.sockets.size === 0) this.allClosed?.();
  }
}

export { CloseCode };
