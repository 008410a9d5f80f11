import { Readable } from "node:stream";
import type { HttpRequest, HttpResponse, TemplatedApp } from "uWebSockets.js";
import type { HttpApi } from "../api/http-api.js";
import type { ApiRequest, ApiResponse } from "../api/types.js";

type Handler = Parameters<HttpApi["handle"]>[1];

const STATUS: Record<number, string> = {
  200: "200 OK", 400: "400 Bad Request", 401: "401 Unauthorized", 404: "404 Not Found", 413: "413 Payload Too Large",
  415: "415 Unsupported Media Type", 500: "500 Internal Server Error", 503: "503 Service Unavailable",
};

const HEADERS = ["authorization", "content-type", "content-length"] as const;

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
  let paused = false;
  const body = new Readable({
    read() {
      if (paused && !state.aborted && !state.responded) {
        paused = false;
        res.resume();
      }
    },
  });
  res.onData((chunk, isLast) => {
    // Once answered (e.g. 401 or 413 before the body was read), the rest of the body is dropped
    // and `res` must not be touched again.
    if (state.responded) return;
    // The chunk is only valid during this callback: copy it.
    if (chunk.byteLength > 0 && !body.push(Buffer.from(chunk.slice(0))) && !isLast) {
      paused = true;
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
}

function send(res: HttpResponse, state: RequestState, out: ApiResponse): void {
  if (state.aborted) {
    out.stream?.readable.destroy();
    return;
  }
  state.responded = true;
  const status = STATUS[out.status] ?? `${out.status} Status`;
  if (out.stream) return streamFile(res, state, status, out.stream);
  res.cork(() => {
    res.writeStatus(status);
    for (const [k, v] of Object.entries(out.headers ?? {})) res.writeHeader(k, v);
    res.writeHeader("content-type", "application/json").end(JSON.stringify(out.json ?? null));
  });
}

/** Streams a file with backpressure (tryEnd / onWritable), the file never held whole in memory. */
function streamFile(res: HttpResponse, state: RequestState, status: string, file: NonNullable<ApiResponse["stream"]>): void {
  const { readable, size, contentType } = file;
  res.cork(() => {
    res.writeStatus(status).writeHeader("content-type", contentType).writeHeader("cache-control", "private, max-age=300");
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
  const serve = (method: "get" | "post", pattern: string, paramNames: readonly string[], run: (request: ApiRequest) => Promise<ApiResponse>) => {
    app[method](pattern, (res, req) => {
      const request = copyRequest(req, method.toUpperCase(), paramNames);
      const state: RequestState = { aborted: false, responded: false };
      res.onAborted(() => {
        state.aborted = true;
        request.body?.destroy();
      });
      if (method === "post") request.body = bodyStream(res, state);
      void run(request).then((out) => send(res, state, out));
    });
  };
  const route = (method: "get" | "post", pattern: string, paramNames: readonly string[], handler: Handler) =>
    serve(method, pattern, paramNames, (request) => api.handle(request, handler));
  route("get", "/api/conversations", [], api.conversations);
  route("get", "/api/conversations/", [], api.conversations);
  route("get", "/api/rooms/check-url", [], api.checkUrl);
  route("get", "/api/rooms/check-url/", [], api.checkUrl);
  route("get", "/api/rooms/refresh-url", [], api.refreshUrl);
  route("get", "/api/rooms/refresh-url/", [], api.refreshUrl);
  route("post", "/api/rooms/upload", [], api.upload);
  route("post", "/api/rooms/upload/", [], api.upload);
  route("get", "/api/rooms/:username/messages", ["username"], api.messages);
  route("get", "/api/rooms/:username/messages/", ["username"], api.messages);
  route("get", "/chat-media/:identifier", ["identifier"], api.media);
  // No bearer token: this is where a development client gets one.
  serve("post", "/api/dev/token", [], (request) => api.handleAnonymous(request, api.devToken));
  serve("post", "/api/dev/token/", [], (request) => api.handleAnonymous(request, api.devToken));
}
