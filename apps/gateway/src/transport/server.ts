import type { HttpResponse, TemplatedApp, us_listen_socket, WebSocket } from "uWebSockets.js";
import { CloseCode, ErrorCode, UpgradeRefusal } from "@chat/protocol";
import { AuthError, extractToken, type TokenVerifier } from "../auth.js";
import type { Logger } from "@chat/log";
import { parseWebSocketPath, type Endpoint } from "../routes.js";
import { ChatSession } from "../sessions/chat-session.js";
import type { GatewayCore } from "../sessions/core.js";
import { NotificationSession } from "../sessions/notification-session.js";
import type { Session, SessionSocket } from "../sessions/socket.js";
import { loadNativeUws } from "./uws.js";

const uws = loadNativeUws();

interface SocketData {
  username: string;
  endpoint: Endpoint;
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

function refuse(res: HttpResponse, status: number, code: string, message: string): void {
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
  /** Open sockets by endpoint kind, for logs and metrics. */
  readonly openSockets = { chat: 0, notifications: 0, "conversation-notifications": 0 };

  constructor(
    private readonly core: GatewayCore,
    private readonly verifier: TokenVerifier,
    private readonly readiness: Readiness,
    private readonly options: ServerOptions,
    private readonly log: Logger,
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

  closeAll(code: number, reason: string): void {
    for (const ws of [...this.sockets]) ws.end(code, reason);
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
    if (!this.readiness.ready()) return refuse(res, UpgradeRefusal.unavailable, "unavailable", "node not ready; try another");
    const route = parseWebSocketPath(url);
    if (!route.ok) return refuse(res, UpgradeRefusal.bad_request, "bad_path", route.reason);
    this.verifier.verify(extractToken(query, authorization)).then(
      (username) => {
        if (aborted) return;
        const endpoint = route.endpoint;
        if (endpoint.kind !== "notifications" && endpoint.other === username) {
          return refuse(res, UpgradeRefusal.bad_request, "bad_path", "cannot open a conversation with yourself");
        }
        if (!this.readiness.ready()) return refuse(res, UpgradeRefusal.unavailable, "unavailable", "node not ready; try another");
        const data: SocketData = { username, endpoint, session: null, closed: false };
        res.cork(() => res.upgrade(data, key, protocol, extensions, context));
      },
      (err: unknown) => {
        if (aborted) return;
        const code = err instanceof AuthError ? err.code : "token_invalid";
        this.log.info({ code, path: url }, "upgrade refused: unauthorized");
        refuse(res, UpgradeRefusal.unauthorized, code, err instanceof AuthError ? err.message : "invalid token");
      },
    );
  }

  private open(ws: WebSocket<SocketData>): void {
    const data = ws.getUserData();
    this.sockets.add(ws);
    this.openSockets[data.endpoint.kind]++;
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
        ? new ChatSession(this.core, socket, data.username, endpoint.other)
        : new NotificationSession(this.core, socket, data.username, endpoint.kind === "notifications" ? undefined : endpoint.other);
    void data.session.start();
  }

  private message(ws: WebSocket<SocketData>, message: ArrayBuffer, isBinary: boolean): void {
    const data = ws.getUserData();
    const send = (code: ErrorCode, text: string): void => {
      ws.send(JSON.stringify({ type: "error", code, message: text }), false, false);
    };
    if (isBinary) return send(ErrorCode.binary_not_supported, "binary frames are not supported; send JSON text");
    if (message.byteLength > this.options.maxFrameBytes) {
      return send(ErrorCode.frame_too_large, `frame is larger than ${this.options.maxFrameBytes} bytes`);
    }
    // The ArrayBuffer is only valid during this callback: decode it now.
    data.session?.receive(Buffer.from(message).toString("utf8"));
  }

  private closed(ws: WebSocket<SocketData>): void {
    const data = ws.getUserData();
    data.closed = true;
    this.sockets.delete(ws);
    this.openSockets[data.endpoint.kind]--;
    data.session?.stop();
  }
}

export { CloseCode };
