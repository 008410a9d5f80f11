import { readdirSync, readFileSync, statSync } from "node:fs";
import { extname } from "node:path";
import { fileURLToPath } from "node:url";
import type { TemplatedApp } from "uWebSockets.js";
import type { Logger } from "@chat/log";

/** apps/gateway/public, seen from apps/gateway/dist/transport/ (and from src/transport/ alike). */
export const PUBLIC_DIR = new URL("../../public/", import.meta.url);

const CONTENT_TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon",
  ".json": "application/json",
};

/**
 * The page may talk to this origin only (HTTP API and sockets); media may also come from presigned
 * https URLs (S3). No inline script or style, so injected markup could not run even if it got in.
 */
const CONTENT_SECURITY_POLICY = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "connect-src 'self' ws: wss:",
  "img-src 'self' https: data: blob:",
  "media-src 'self' https: blob:",
  "object-src 'none'",
  "base-uri 'none'",
  "frame-ancestors 'none'",
  "form-action 'self'",
].join("; ");

interface StaticFile {
  body: Buffer;
  contentType: string;
}

/** Every file directly under `dir` whose type we know, keyed by URL path; `index.html` also at `/`. */
export function loadStaticFiles(dir: URL = PUBLIC_DIR): Map<string, StaticFile> {
  const files = new Map<string, StaticFile>();
  const root = fileURLToPath(dir);
  for (const name of readdirSync(root)) {
    const contentType = CONTENT_TYPES[extname(name).toLowerCase()];
    const path = new URL(name, dir);
    if (!contentType || !statSync(path).isFile()) continue;
    const file = { body: readFileSync(path), contentType };
    files.set(`/${name}`, file);
    if (name === "index.html") files.set("/", file);
  }
  return files;
}

/**
 * Serves the browser client of apps/gateway/public (read once, at start-up, into memory) at `/`,
 * `/app.js`, `/style.css`... with `cache-control: no-cache`, so a redeploy is picked up at the next
 * load. A node whose image lacks the directory logs a warning and serves the API and sockets only.
 */
export function registerStaticFiles(app: TemplatedApp, log: Logger, dir: URL = PUBLIC_DIR): void {
  let files: Map<string, StaticFile>;
  try {
    files = loadStaticFiles(dir);
  } catch (err) {
    log.warn({ err, dir: fileURLToPath(dir) }, "browser client not served: cannot read its directory");
    return;
  }
  for (const [path, file] of files) {
    // Copied once: uWebSockets.js sends from the same bytes on every request.
    const body = file.body.buffer.slice(file.body.byteOffset, file.body.byteOffset + file.body.byteLength) as ArrayBuffer;
    app.get(path, (res) => {
      res.cork(() => {
        res.writeHeader("content-type", file.contentType).writeHeader("cache-control", "no-cache").writeHeader("x-content-type-options", "nosniff");
        if (file.contentType.startsWith("text/html")) {
          res.writeHeader("content-security-policy", CONTENT_SECURITY_POLICY).writeHeader("referrer-policy", "no-referrer");
        }
        res.end(body);
      });
    });
  }
  log.debug({ files: [...files.keys()] }, "browser client loaded");
}
