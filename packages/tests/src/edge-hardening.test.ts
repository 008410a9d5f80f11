import { connect as tcpConnect } from "node:net";
import { describe, expect, it } from "vitest";
import { JWT_SECRET, freePort, freshPrefix, runScript, startGateway, tokenFor, uniqueUser, waitFor, type Gateway } from "./helpers/index.js";

// The gateway's edge: request framing (smuggling), exclusive ports, the metrics port.

/**
 * Writes raw bytes on one connection and collects what comes back until the server closes it or
 * `responses` status lines arrived (a server that keeps the connection open is waited on that long).
 */
async function raw(port: number, bytes: string, responses = 2, timeoutMs = 5000): Promise<{ text: string; closed: boolean; statusLines: string[] }> {
  const socket = tcpConnect(port, "127.0.0.1");
  let text = "";
  let closed = false;
  socket.on("data", (d: Buffer) => (text += d.toString("latin1")));
  socket.on("close", () => (closed = true));
  socket.on("error", () => {});
  socket.write(bytes);
  // Bodies end without a newline: the next status line may start mid-line.
  const statusLines = () => text.match(/HTTP\/1\.1 \d{3} [^\r\n]*/g) ?? [];
  try {
    await waitFor(() => closed || statusLines().length >= responses, timeoutMs, 20);
  } catch {
    // still open with fewer answers: reported as is
  }
  socket.destroy();
  return { text, closed, statusLines: statusLines() };
}

/** A second request hidden in the body of the first: the payload of a smuggling attempt. */
const SMUGGLED = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

function request(method: string, path: string, headers: string[], body = ""): string {
  return `${method} ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n${headers.map((h) => `${h}\r\n`).join("")}\r\n${body}`;
}

const UPGRADE_HEADERS = ["Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="];

describe("request framing (RFC 9112 §6.3): no request smuggling", () => {
  let g: Gateway;
  const routes = (bob: string): [string, string, string[]][] => [
    ["GET", "/healthz", []],
    ["GET", "/readyz", []],
    ["GET", "/metrics", []],
    ["GET", "/", []],
    ["GET", "/app.js", []],
    ["GET", "/no-such-thing", []],
    ["GET", "/api/conversations", []],
    ["POST", "/api/dev/token", ["Content-Type: application/json"]],
    ["POST", "/api/rooms/upload", []],
    ["GET", `/ws/${bob}/`, UPGRADE_HEADERS],
  ];

  it("answers 400 and closes the connection on conflicting Content-Length headers, on every route, and never answers the smuggled request", async () => {
    g = await startGateway(freshPrefix("smuggle"));
    const bob = uniqueUser("bob");
    const token = await tokenFor(uniqueUser("alice"));
    for (const [method, path, headers] of routes(bob)) {
      const auth = path.startsWith("/ws/") ? `${path}?token=${token}` : path;
      for (const lengths of [["Content-Length: 0", `Content-Length: ${SMUGGLED.length}`], [`Content-Length: ${SMUGGLED.length}`, "Content-Length: 0"]]) {
        const r = await raw(g.port, request(method, auth, [...headers, `Authorization: Bearer ${token}`, ...lengths], SMUGGLED));
        const what = `${method} ${path} with ${lengths.join(" + ")}: ${JSON.stringify(r.text.slice(0, 300))}`;
        expect(r.statusLines, what).toEqual(["HTTP/1.1 400 Bad Request"]);
        expect(r.closed, what).toBe(true);
        expect(r.text, what).toContain("malformed request framing");
      }
    }
  });

  // uWebSockets.js drops some of these itself, before any handler (closed without an answer); the
  // rest reach our guard. Either way: never a second answer, and the connection closes.
  it("refuses Transfer-Encoding with Content-Length, a list of lengths, and a Content-Length that is not a number", async () => {
    g = await startGateway(freshPrefix("smuggle-te"));
    const cases: [string, string[], string][] = [
      ["TE + CL", ["Transfer-Encoding: chunked", `Content-Length: ${SMUGGLED.length}`], `0\r\n\r\n${SMUGGLED}`],
      ["CL + TE", [`Content-Length: 4`, "Transfer-Encoding: chunked"], `0\r\n\r\n${SMUGGLED}`],
      ["CL not a number", ["Content-Length: 4x"], SMUGGLED],
      ["CL negative", ["Content-Length: -1"], SMUGGLED],
      ["CL as a list of two lengths", [`Content-Length: 0, ${SMUGGLED.length}`], SMUGGLED],
    ];
    for (const path of ["/healthz", "/api/conversations", "/", `/ws/${uniqueUser("bob")}/`]) {
      for (const [what, headers, body] of cases) {
        const extra = path.startsWith("/ws/") ? UPGRADE_HEADERS : [];
        const r = await raw(g.port, request(path === "/api/conversations" ? "POST" : "GET", path, [...extra, ...headers], body));
        const label = `${what} on ${path}: ${JSON.stringify(r.text.slice(0, 300))}`;
        expect(r.statusLines.length, label).toBeLessThanOrEqual(1);
        if (r.statusLines.length === 1) expect(r.statusLines[0], label).toMatch(/^HTTP\/1\.1 400/);
        expect(r.closed, label).toBe(true);
      }
    }
  });

  it("still serves well-framed requests, pipelined, with one Content-Length or the same one twice", async () => {
    g = await startGateway(freshPrefix("smuggle-ok"));
    const twice = request("GET", "/healthz", ["Content-Length: 0"]) + request("GET", "/readyz", ["Content-Length: 0"]);
    const r = await raw(g.port, twice, 2);
    expect(r.statusLines).toEqual(["HTTP/1.1 200 OK", "HTTP/1.1 200 OK"]);
    expect(r.closed).toBe(false);
    const same = await raw(g.port, request("POST", "/api/dev/token", ["Content-Length: 2", "Content-Length: 2"], "{}"), 1);
    expect(same.statusLines).toEqual(["HTTP/1.1 404 Not Found"]);
  });
});

describe("exclusive ports", () => {
  it("a second gateway on a port in use exits non-zero with one line naming the port and PORT; the first keeps serving", async () => {
    // An explicit port, as in production (uSockets asks for SO_REUSEPORT only then, not for port 0).
    const first = await startGateway(freshPrefix("port-a"), { PORT: String(await freePort()) });
    const second = await runScript(
      "apps/gateway/dist/main.js",
      [],
      { PORT: String(first.port), HOST: "127.0.0.1", CHAT_JWT_SECRET: JWT_SECRET, CHAT_REDIS_PREFIX: freshPrefix("port-b") },
      10_000,
    );
    expect(second.code, `still running after 10 s (it shares the port); stdout: ${second.stdout}`).not.toBeNull();
    expect(second.code).not.toBe(0);
    expect(second.stdout).not.toContain('"msg":"listening"');
    expect(second.stderr).toBe(`gateway: port ${first.port} is already in use (127.0.0.1:${first.port}): stop the other process or set PORT to a free port (0 picks one)\n`);
    expect((await fetch(`http://127.0.0.1:${first.port}/healthz`)).status).toBe(200);
  });

  it("a gateway whose metrics port is in use exits non-zero naming CHAT_METRICS_PORT", async () => {
    const first = await startGateway(freshPrefix("mport-a"), { PORT: String(await freePort()) });
    const second = await runScript(
      "apps/gateway/dist/main.js",
      [],
      { PORT: "0", HOST: "127.0.0.1", CHAT_METRICS_PORT: String(first.port), CHAT_JWT_SECRET: JWT_SECRET, CHAT_REDIS_PREFIX: freshPrefix("mport-b") },
      10_000,
    );
    expect(second.code, second.stdout).not.toBeNull();
    expect(second.code).not.toBe(0);
    expect(second.stderr).toMatch(new RegExp(`^gateway: port ${first.port} is already in use .*set CHAT_METRICS_PORT .*\\n$`));
  });
});

describe("metrics port (CHAT_METRICS_PORT, CHAT_METRICS_HOST)", () => {
  it("serves /metrics only on the metrics port when it is set, and nothing else there", async () => {
    const g = await startGateway(freshPrefix("metrics-port"), { CHAT_METRICS_PORT: "0", CHAT_METRICS_HOST: "127.0.0.1" });
    const metricsPort = Number(g.logs.find((l) => l["msg"] === "listening")!["metricsPort"]);
    expect(metricsPort).toBeGreaterThan(0);
    expect(metricsPort).not.toBe(g.port);
    const onMain = await fetch(`http://127.0.0.1:${g.port}/metrics`);
    expect(onMain.status).toBe(404);
    expect(await onMain.json()).toEqual({ error: "not_found", message: expect.any(String) });
    const body = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    expect(body).toContain("chat_gateway_open_sockets");
    for (const path of ["/healthz", "/api/conversations", "/"]) {
      expect((await fetch(`http://127.0.0.1:${metricsPort}${path}`)).status, path).toBe(404);
    }
    // The API port still answers its health checks.
    expect((await fetch(`http://127.0.0.1:${g.port}/readyz`)).status).toBe(200);
  });

  it("serves /metrics on PORT by default", async () => {
    const g = await startGateway(freshPrefix("metrics-default"));
    expect(g.logs.find((l) => l["msg"] === "listening")!["metricsPort"]).toBe(g.port);
    expect((await fetch(`http://127.0.0.1:${g.port}/metrics`)).status).toBe(200);
  });
});
