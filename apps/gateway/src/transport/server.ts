import type { HttpResponse, TemplatedApp, us_listen_socket, WebSocket } from "uWebSockets.js";
import { CloseCode, ErrorCode, UpgradeRefusal, clientIdOf } from "@chat/protocol";
import { AuthError, extractToken, type TokenVerifier } from "../auth.js";
import type { Logger } from "@chat/log";
import type { GatewayMetrics } from "../metrics.js";
import { parseWebSocketPath, type Endpoint } from "../routes.js";
import { ChatSession } from "../sessions/chat-session.js";
import type { GatewayCore } from "../sessions/core.js";
import { NotificationSession } from "../sessions/notification-session.js";
import type { Session, SessionSocket } from "../sessions/socket.js";
import type { HttpApi } from "../api/http-api.js";
import { registerApiRoutes } from "./http.js";
import { loadNativeUws } from "./uws.js";

const uws = loadNativeUws();

interface SocketData {
  username: string;
  endpoint: Endpoint;
  since: string | undefined;
  session: Session | null;
  closed: boolean;
}

export interface ServerOptions {
  host: string;
  port: number;
  maxFrameBytes: number;
  maxBackpressureBytes: number;
  idleTimeoutSeconds: number;
}

/** Decides whether this node takes new sockets (Redis up, not draining). */
export interface Readiness {
  ready(): boolean;
}

const STATUS_TEXT: Record<number, string> = { 400: "400 Bad Request", 401: "401 Unauthorized", 404: "404 Not Found", 503: "503 Service Unavailable" };

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
  private readonly sockets = new Set<WebSocket<SocketData>>();
  private allClosed: (() => void) | null = null;

  constructor(
    private readonly core: GatewayCore,
    private readonly verifier: TokenVerifier,
    private readonly readiness: Readiness,
    private readonly options: ServerOptions,
    private readonly log: Logger,
    private readonly metrics: GatewayMetrics,
    api: HttpApi,
  ) {
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
      close: (ws) => this.closed(ws),
    });
    this.app.get("/healthz", (res) => void res.end("ok"));
    this.app.get("/readyz", (res) => {
      if (this.readiness.ready()) res.end("ready");
      else refuse(res, 503, "not_ready", "redis unreachable or draining");
    });
    this.app.get("/metrics", (res) => {
      let aborted = false;
      res.onAborted(() => {
        aborted = true;
      });
      void this.metrics.registry.metrics().then((body) => {
        if (aborted) return;
        res.cork(() => res.writeHeader("content-type", this.metrics.registry.contentType).end(body));
      });
    });
    registerApiRoutes(this.app, api);
    this.app.any("/*", (res) => refuse(res, 404, "not_found", "no such endpoint"));
  }

  listen(): Promise<number> {
    return new Promise((resolve, reject) => {
      this.app.listen(this.options.host, this.options.port, (socket) => {
        if (!socket) return reject(new Error(`could not listen on ${this.options.host}:${this.options.port}`));
        this.listenSocket = socket;
        resolve(uws.us_socket_local_port(socket));
      });
    });
  }

  /** Stops accepting connections; open sockets stay until closeAll. */
  stopListening(): void {
    if (this.listenSocket) uws.us_listen_socket_close(this.listenSocket);
    this.listenSocket = null;
  }

  get socketCount(): number {
    return this.sockets.size;
  }

  /**
   * Closes every socket with `code`, spread evenly over `windowMs` so that their clients do not all
   * reconnect to the other nodes at the same instant. Resolves once all are closed.
   */
  async closeGradually(code: number, reason: string, windowMs: number): Promise<void> {
    const sockets = [...this.sockets];
    if (sockets.length === 0) return;
    const done = new Promise<void>((resolve) => (this.allClosed = resolve));
    const ticks = Math.max(1, Math.min(sockets.length, Math.floor(windowMs / 50)));
    const perTick = Math.ceil(sockets.length / ticks);
    for (let i = 0; i < sockets.length; i += perTick) {
      for (const ws of sockets.slice(i, i + perTick)) if (!ws.getUserData().closed) ws.end(code, reason);
      if (i + perTick < sockets.length) await new Promise((r) => setTimeout(r, windowMs / ticks));
    }
    if (this.sockets.size > 0) await done;
  }

  private upgrade(res: HttpResponse, req: import("uWebSockets.js").HttpRequest, context: import("uWebSockets.js").us_socket_context_t): void {
    // The request object dies at the first await: copy everything now.
    const url = req.getUrl();
    const query = req.getQuery() ?? "";
    const key = req.getHeader("sec-websocket-key");
    const protocol = req.getHeader("sec-websocket-protocol");
    const extensions = req.getHeader("sec-websocket-extensions");
    const authorization = req.getHeader("authorization");
    let aborted = false;
    res.onAborted(() => {
      aborted = true;
    });
    if (!this.readiness.ready()) return refuse(res, UpgradeRefusal.unavailable, "unavailable", "node not ready; try another", this.metrics);
    const route = parseWebSocketPath(url);
    if (!route.ok) return refuse(res, UpgradeRefusal.bad_request, "bad_path", route.reason, this.metrics);
    const since = new URLSearchParams(query).get("since") || undefined;
    if (since !== undefined && (route.endpoint.kind !== "chat" || !/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(since))) {
      return refuse(res, UpgradeRefusal.bad_request, "bad_since", "since must be a message id, on a chat socket", this.metrics);
    }
    this.verifier.verify(extractToken(query, authorization)).then(
      (username) => {
        if (aborted) return;
        const endpoint = route.endpoint;
        if (endpoint.kind !== "notifications" && endpoint.other === username) {
          return refuse(res, UpgradeRefusal.bad_request, "bad_path", "cannot open a conversation with yourself", this.metrics);
        }
        if (!this.readiness.ready()) return refuse(res, UpgradeRefusal.unavailable, "unavailable", "node not ready; try another", this.metrics);
        const data: SocketData = { username, endpoint, since, session: null, closed: false };
        res.cork(() => res.upgrade(data, key, protocol, extensions, context));
      },
      (err: unknown) => {
        if (aborted) return;
        const code = err instanceof AuthError ? err.code : "token_invalid";
        this.log.info({ code, path: url }, "upgrade refused: unauthorized");
        refuse(res, UpgradeRefusal.unauthorized, code, err instanceof AuthError ? err.message : "invalid token", this.metrics);
      },
    );
  }

  private open(ws: WebSocket<SocketData>): void {
    const data = ws.getUserData();
    this.sockets.add(ws);
    this.metrics.openSockets.inc({ endpoint: data.endpoint.kind });
    const socket: SessionSocket = {
      send: (frame) => {
        if (!data.closed) ws.cork(() => void ws.send(frame, false, false));
      },
      close: (code, reason) => {
        if (!data.closed) ws.end(code, reason);
      },
    };
    const endpoint = data.endpoint;
    data.session =
      endpoint.kind === "chat"
        ? new ChatSession(this.core, socket, data.username, endpoint.other, data.since)
        : new NotificationSession(this.core, socket, data.username, endpoint.kind === "notifications" ? undefined : endpoint.other);
    void data.session.start();
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

  private closed(ws: WebSocket<SocketData>): void {
    const data = ws.getUserData();
    data.closed = true;
    this.sockets.delete(ws);
    this.metrics.openSockets.dec({ endpoint: data.endpoint.kind });
    data.session?.stop();
    if (this.sockets.size === 0) this.allClosed?.();
  }
}

export { CloseCode };
