import { Readable } from "node:stream";
import type { HttpRequest, HttpResponse, TemplatedApp } from "uWebSockets.js";
import type { HttpApi } from "../api/http-api.js";
import type { ApiRequest, ApiResponse } from "../api/types.js";

type Handler = Parameters<HttpApi["handle"]>[1];

const STATUS: Record<number, string> = {
  200: "200 OK", 201: "201 Created", 400: "400 Bad Request", 401: "401 Unauthorized", 403: "403 Forbidden", 404: "404 Not Found", 409: "409 Conflict", 413: "413 Payload Too Large",
  415: "415 Unsupported Media Type", 429: "429 Too Many Requests", 500: "500 Internal Server Error", 503: "503 Service Unavailable",
};

const HEADERS = ["authorization", "content-type", "content-length", "connection"] as const;

/**
 * A refusal sent before the request body is in (a 413 on the declared length, a 415 after sniffing...)
 * to a client that asked to close the connection: the rest of the body is read and discarded for up to
 * this long and this many bytes before closing, so that the client, still sending, gets to read the
 * answer instead of a reset (a lingering close).
 */
const LINGER_MS = 2000;
const LINGER_BYTES = 8 * 1024 * 1024;

/** The client went away in the middle of its request body. */
export class RequestAbortedError extends Error {
  override readonly name = "RequestAbortedError";
  readonly code = "client_aborted";
  constructor(readonly path: string) {
    super(`client went away before sending the whole body of ${path}`);
  }
}

/** Copies what the API needs out of a uWebSockets.js request, which dies at the first await. */
function copyRequest(req: HttpRequest, method: string, paramNames: readonly string[]): ApiRequest {
  const params: Record<string, string> = {};
  paramNames.forEach((name, i) => {
    try {
      params[name] = decodeURIComponent(req.getParameter(i) ?? "");
    } catch {
      params[name] = "";
    }
  });
  const headers: Record<string, string> = {};
  for (const h of HEADERS) {
    const v = req.getHeader(h);
    if (v) headers[h] = v;
  }
  return { method, path: req.getUrl(), params, query: new URLSearchParams(req.getQuery() ?? ""), headers };
}

/**
 * The request body as a Node stream with backpressure: when the consumer falls behind, the socket
 * is paused, so an upload is never buffered whole in memory.
 */
function bodyStream(res: HttpResponse, state: RequestState): Readable {
  // Resume only what we paused: resuming a socket that is not paused (as Readable.read does on
  // every call) stalls uWebSockets.js' body delivery.
  const body = new Readable({
    read() {
      if (state.paused && !state.aborted && !state.responded) {
        state.paused = false;
        res.resume();
      }
    },
  });
  // Destroyed with an error when the client goes away, possibly before any handler listens.
  body.on("error", () => {});
  res.onData((chunk, isLast) => {
    if (isLast) state.bodyDone = true;
    // Once answered (e.g. 401 or 413 before the body was read), the rest of the body is dropped.
    if (state.responded) return void state.linger?.(chunk.byteLength, isLast);
    // The chunk is only valid during this callback: copy it.
    if (chunk.byteLength > 0 && !body.push(Buffer.from(chunk.slice(0))) && !isLast) {
      state.paused = true;
      res.pause();
    }
    if (isLast) body.push(null);
  });
  return body;
}

/** Per request: the client went away, or we have answered. */
interface RequestState {
  aborted: boolean;
  responded: boolean;
  /** The request has a body (POST) and all of it has arrived. */
  bodyDone: boolean;
  /** The body's delivery is paused (backpressure). */
  paused: boolean;
  /** While lingering after an early answer: the discarded body bytes as they come. */
  linger?: (bytes: number, isLast: boolean) => void;
  onAbort?: () => void;
}

function send(res: HttpResponse, state: RequestState, out: ApiResponse, request: ApiRequest): void {
  if (state.aborted) {
    out.stream?.readable.destroy();
    return;
  }
  const status = STATUS[out.status] ?? `${out.status} Status`;
  if (request.body && !state.bodyDone && request.headers["connection"]?.toLowerCase().includes("close")) {
    return answerThenLinger(res, state, status, out, request);
  }
  state.responded = true;
  // What the handler did not read of the body is dropped (uWebSockets.js discards the rest itself,
  // once the socket is no longer paused).
  request.body?.destroy();
  if (state.paused) {
    state.paused = false;
    res.resume();
  }
  if (out.stream) return streamFile(res, state, status, out);
  res.cork(() => {
    res.writeStatus(status);
    for (const [k, v] of Object.entries(out.headers ?? {})) res.writeHeader(k, v);
    res.writeHeader("x-content-type-options", "nosniff");
    res.writeHeader("content-type", "application/json").end(JSON.stringify(out.json ?? null));
  });
}

/**
 * Answers before the body is in, then keeps reading and discarding it (at most LINGER_MS and
 * LINGER_BYTES) before the connection closes: closing at once with unread bytes makes the kernel
 * send a reset, and the client, still sending, loses the answer. The answer goes out chunked, so
 * the connection stays ours until we end it.
 */
function answerThenLinger(res: HttpResponse, state: RequestState, status: string, out: ApiResponse, request: ApiRequest): void {
  state.responded = true;
  request.body?.destroy();
  let discarded = 0;
  const finish = (wholeBody: boolean) => {
    clearTimeout(timer);
    state.linger = undefined;
    if (state.aborted) return;
    state.aborted = true;
    // The whole body was read: end the answer normally (and close, as asked). Otherwise close now.
    res.cork(() => (wholeBody ? res.end() : res.close()));
  };
  const timer = setTimeout(() => finish(false), LINGER_MS);
  state.onAbort = () => clearTimeout(timer);
  state.linger = (bytes, isLast) => {
    discarded += bytes;
    if (isLast) finish(true);
    else if (discarded > LINGER_BYTES) finish(false);
  };
  res.cork(() => {
    res.writeStatus(status);
    for (const [k, v] of Object.entries(out.headers ?? {})) res.writeHeader(k, v);
    res.writeHeader("x-content-type-options", "nosniff").writeHeader("content-type", "application/json");
    res.write(JSON.stringify(out.json ?? null));
  });
  if (state.bodyDone) return finish(true);
  if (state.paused) {
    state.paused = false;
    res.resume();
  }
}

/** Streams a file with backpressure (tryEnd / onWritable), the file never held whole in memory. */
function streamFile(res: HttpResponse, state: RequestState, status: string, out: ApiResponse): void {
  const { readable, size, contentType } = out.stream!;
  res.cork(() => {
    res.writeStatus(status).writeHeader("content-type", contentType).writeHeader("cache-control", "private, max-age=300");
    for (const [k, v] of Object.entries(out.headers ?? {})) res.writeHeader(k, v);
  });
  if (size === 0) {
    res.cork(() => res.end());
    readable.destroy();
    return;
  }
  readable.on("data", (chunk: Buffer) => {
    if (state.aborted) return void readable.destroy();
    const ab = chunk.buffer.slice(chunk.byteOffset, chunk.byteOffset + chunk.byteLength) as ArrayBuffer;
    const offset = res.getWriteOffset();
    let ok = false;
    let done = false;
    res.cork(() => ([ok, done] = res.tryEnd(ab, size)));
    if (done) return void readable.destroy();
    if (!ok) {
      readable.pause();
      res.onWritable((at) => {
        const [retryOk, retryDone] = res.tryEnd(ab.slice(at - offset), size);
        if (retryDone) readable.destroy();
        else if (retryOk) readable.resume();
        return retryOk;
      });
    }
  });
  readable.on("error", () => {
    if (!state.aborted) res.close();
  });
}

/** Registers the API routes of docs/openapi.yaml on the uWebSockets.js app. */
export function registerApiRoutes(app: TemplatedApp, api: HttpApi): void {
  const serve = (
    method: "get" | "post" | "patch" | "del",
    pattern: string,
    paramNames: readonly string[],
    run: (request: ApiRequest) => Promise<ApiResponse>,
    /** The largest body this route reads: a larger declared Content-Length is answered 413 before anything else. */
    maxBody?: () => number,
  ) => {
    app[method](pattern, (res, req) => {
      const request = copyRequest(req, method === "del" ? "DELETE" : method.toUpperCase(), paramNames);
      const hasBody = method === "post" || method === "patch";
      const state: RequestState = { aborted: false, responded: false, bodyDone: !hasBody, paused: false };
      res.onAborted(() => {
        state.aborted = true;
        state.onAbort?.();
        // With an error, so that whatever reads the body (busboy, storage) fails and lets go of its
        // file and descriptor; a plain destroy left them waiting forever.
        request.body?.destroy(new RequestAbortedError(request.path));
      });
      if (hasBody) request.body = bodyStream(res, state);
      const declared = Number(request.headers["content-length"] ?? "0");
      if (maxBody && declared > maxBody()) {
        // Whatever the connection header says: we will not read this body, so we close after lingering.
        request.headers["connection"] = "close";
        const limit = maxBody();
        return answerThenLinger(res, state, STATUS[413]!, { status: 413, json: { error: "file_too_large", message: `request body is larger than ${limit} bytes` } }, request);
      }
      void run(request).then((out) => send(res, state, out, request));
    });
  };
  const route = (method: "get" | "post" | "patch" | "del", pattern: string, paramNames: readonly string[], handler: Handler) =>
    serve(method, pattern, paramNames, (request) => api.handle(request, handler));
  /** A route with and without its trailing slash. */
  const both = (method: "get" | "post" | "patch" | "del", pattern: string, paramNames: readonly string[], handler: Handler) => {
    route(method, pattern, paramNames, handler);
    route(method, `${pattern}/`, paramNames, handler);
  };
  both("post", "/api/groups", [], api.groups.create);
  both("get", "/api/groups/:id", ["id"], api.groups.get);
  both("patch", "/api/groups/:id", ["id"], api.groups.rename);
  both("post", "/api/groups/:id/members", ["id"], api.groups.addMember);
  both("del", "/api/groups/:id/members/:username", ["id", "username"], api.groups.removeMember);
  both("get", "/api/groups/:id/messages", ["id"], api.groups.messages);
  both("get", "/api/conversations", [], api.conversations);
  both("get", "/api/rooms/check-url", [], api.checkUrl);
  both("get", "/api/rooms/refresh-url", [], api.refreshUrl);
  const uploadLimit = () => api.maxUploadBodyBytes;
  serve("post", "/api/rooms/upload", [], (request) => api.handle(request, api.upload), uploadLimit);
  serve("post", "/api/rooms/upload/", [], (request) => api.handle(request, api.upload), uploadLimit);
  both("get", "/api/rooms/:username/messages", ["username"], api.messages);
  // Authenticated by its signed URL, or by a bearer token in the Authorization header (never the query).
  serve("get", "/chat-media/:identifier", ["identifier"], (request) => api.handleAnonymous(request, api.media));
  // No bearer token: this is where a development client gets one.
  serve("post", "/api/dev/token", [], (request) => api.handleAnonymous(request, api.devToken));
  serve("post", "/api/dev/token/", [], (request) => api.handleAnonymous(request, api.devToken));
}
