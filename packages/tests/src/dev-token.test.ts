import { connect as tcpConnect } from "node:net";
import { networkInterfaces } from "node:os";
import { jwtVerify } from "jose";
import { describe, expect, it } from "vitest";
import { DEVELOPMENT_JWT_SECRET, connectReady, dropPrefixAtEnd, embeddedDataDir, freePort, freshPrefix, runScript, spawnNode, startGateway, tokenFor, uniqueUser, type Gateway } from "./helpers/index.js";

// POST /api/dev/token (development gateways only) and the browser client's static files at `/`.

/** Development mode as `npm start` runs it: no CHAT_JWT_SECRET, so the built-in development secret. */
const DEV = { NODE_ENV: "development", CHAT_JWT_SECRET: "" };

/** An IPv4 address of this machine other than loopback, if it has one. */
function externalAddress(): string | undefined {
  return Object.values(networkInterfaces())
    .flat()
    .find((i) => i && i.family === "IPv4" && !i.internal)?.address;
}

/** Whether a TCP connection to address:port is accepted. */
function accepts(address: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = tcpConnect(port, address);
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

function base(g: Gateway): string {
  return `http://127.0.0.1:${g.port}`;
}

async function postToken(g: Gateway, body: string, path = "/api/dev/token") {
  const res = await fetch(`${base(g)}${path}`, { method: "POST", headers: { "content-type": "application/json" }, body });
  expect(res.headers.get("content-type")).toBe("application/json");
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

/** The API's refusal shape (docs/openapi.yaml Error): exactly `error` and `message`, both strings. */
function expectError(body: Record<string, unknown>, code: string): void {
  expect(Object.keys(body).sort()).toEqual(["error", "message"]);
  expect(body["error"]).toBe(code);
  expect(typeof body["message"]).toBe("string");
}

describe("POST /api/dev/token", () => {
  it("in development mode signs a 24 h HS256 token for the username, accepted by the API and the sockets", async () => {
    const prefix = freshPrefix("devtoken");
    dropPrefixAtEnd(prefix);
    const g = await startGateway(prefix, DEV);
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");

    for (const path of ["/api/dev/token", "/api/dev/token/"]) {
      const r = await postToken(g, JSON.stringify({ username: alice }), path);
      expect(r.status, path).toBe(200);
      expect(Object.keys(r.body)).toEqual(["token"]);
      const token = String(r.body["token"]);
      const { payload, protectedHeader } = await jwtVerify(token, new TextEncoder().encode(DEVELOPMENT_JWT_SECRET), { algorithms: ["HS256"] });
      expect(protectedHeader.alg).toBe("HS256");
      expect(payload.sub).toBe(alice);
      expect(payload.exp! - payload.iat!).toBe(86_400);
      expect(Math.abs(payload.iat! - Date.now() / 1000)).toBeLessThan(60);

      const list = await fetch(`${base(g)}/api/conversations`, { headers: { authorization: `Bearer ${token}` } });
      expect(list.status).toBe(200);
      const chat = await connectReady(g.url, `/ws/${bob}/`, token);
      expect(chat.frames[0]).toEqual({ type: "online_user_list", users: [alice] });
      await chat.close();
    }
  });

  it("refuses invalid usernames and bodies with the API's error shape", async () => {
    const prefix = freshPrefix("devtoken-bad");
    dropPrefixAtEnd(prefix);
    const g = await startGateway(prefix, DEV);
    for (const username of ["", "a:b", "a|b", "has space", "x".repeat(151), "notifications", "groups", 42, null]) {
      const r = await postToken(g, JSON.stringify({ username }));
      expect(r.status, JSON.stringify(username)).toBe(400);
      expectError(r.body, "bad_username");
    }
    for (const body of ["{}", "[]", '"alice"', "null"]) {
      const r = await postToken(g, body);
      expect(r.status, body).toBe(400);
      expectError(r.body, "bad_username");
    }
    for (const body of ["", "{", "username=alice"]) {
      const r = await postToken(g, body);
      expect(r.status, body).toBe(400);
      expectError(r.body, "bad_body");
    }
    const big = await postToken(g, JSON.stringify({ username: "alice", pad: "x".repeat(8192) }));
    expect(big.status).toBe(413);
    expectError(big.body, "body_too_large");
    // Still serving.
    expect((await postToken(g, JSON.stringify({ username: "alice" }))).status).toBe(200);
  });

  it("outside development mode answers 404 not_found, exactly like an unknown endpoint", async () => {
    const prefix = freshPrefix("devtoken-off");
    dropPrefixAtEnd(prefix);
    const g = await startGateway(prefix, { NODE_ENV: "production" });
    const unknown = await postToken(g, JSON.stringify({ username: "alice" }), "/api/no-such-endpoint");
    for (const path of ["/api/dev/token", "/api/dev/token/"]) {
      const r = await postToken(g, JSON.stringify({ username: "alice" }), path);
      expect(r.status, path).toBe(404);
      expectError(r.body, "not_found");
      expect(r).toEqual(unknown);
    }
  });

  it("is off (404) in development mode when CHAT_JWT_SECRET is set, and the gateway says so", async () => {
    const prefix = freshPrefix("devtoken-secret");
    dropPrefixAtEnd(prefix);
    // startGateway passes the suite's CHAT_JWT_SECRET: a secret given from outside may be a production one.
    const g = await startGateway(prefix, { NODE_ENV: "development" });
    const r = await postToken(g, JSON.stringify({ username: "alice" }));
    expect(r.status).toBe(404);
    expectError(r.body, "not_found");
    expect(g.logs.find((l) => l["msg"] === "listening")).toMatchObject({ development: true, devSignIn: false });
    expect(g.logs.some((l) => l["level"] === "warn" && String(l["msg"]).includes("development sign-in (POST /api/dev/token) is off: CHAT_JWT_SECRET is set"))).toBe(true);
    // Tokens signed with that secret are still accepted: only the minting is off.
    expect((await fetch(`${base(g)}/api/conversations`, { headers: { authorization: `Bearer ${await tokenFor("alice")}` } })).status).toBe(200);
  });

  it("sets aud and iss when the gateway requires them", async () => {
    const prefix = freshPrefix("devtoken-aud");
    dropPrefixAtEnd(prefix);
    const g = await startGateway(prefix, { ...DEV, CHAT_JWT_AUDIENCE: "chat-clients", CHAT_JWT_ISSUER: "chat-auth" });
    const r = await postToken(g, JSON.stringify({ username: "alice" }));
    expect(r.status).toBe(200);
    const token = String(r.body["token"]);
    const { payload } = await jwtVerify(token, new TextEncoder().encode(DEVELOPMENT_JWT_SECRET), { audience: "chat-clients", issuer: "chat-auth" });
    expect(payload.sub).toBe("alice");
    expect((await fetch(`${base(g)}/api/conversations`, { headers: { authorization: `Bearer ${token}` } })).status).toBe(200);
  });
});

describe("the browser client's files", () => {
  it("are served at /, /index.html, /app.js and /style.css with their content types and cache-control: no-cache", async () => {
    const prefix = freshPrefix("static");
    dropPrefixAtEnd(prefix);
    const g = await startGateway(prefix);
    const expected: [string, RegExp][] = [
      ["/", /^text\/html; charset=utf-8$/],
      ["/index.html", /^text\/html; charset=utf-8$/],
      ["/app.js", /^text\/javascript; charset=utf-8$/],
      ["/style.css", /^text\/css; charset=utf-8$/],
    ];
    const bodies = new Map<string, string>();
    for (const [path, type] of expected) {
      const res = await fetch(`${base(g)}${path}`);
      expect(res.status, path).toBe(200);
      expect(res.headers.get("content-type"), path).toMatch(type);
      expect(res.headers.get("cache-control"), path).toBe("no-cache");
      expect(res.headers.get("x-content-type-options"), path).toBe("nosniff");
      bodies.set(path, await res.text());
    }
    expect(bodies.get("/")).toBe(bodies.get("/index.html"));
    expect(bodies.get("/")).toContain('<script type="module" src="/app.js"></script>');
    const page = await fetch(`${base(g)}/`);
    expect(page.headers.get("content-security-policy")).toContain("script-src 'self'");
    // The client never hands user data to innerHTML.
    expect(bodies.get("/app.js")).not.toMatch(/innerHTML|outerHTML|insertAdjacentHTML|document\.write/);

    for (const path of ["/nope.js", "/public/app.js", "/../package.json", "/app.js/"]) {
      const res = await fetch(`${base(g)}${path}`);
      expect(res.status, path).toBe(404);
      expectError((await res.json()) as Record<string, unknown>, "not_found");
    }
  });
});

describe("development mode stays on this machine", () => {
  it("a development gateway listens on 127.0.0.1 unless HOST is set", async () => {
    const g = await startGateway(freshPrefix("dev-loopback"), { ...DEV, HOST: undefined });
    expect(g.logs.find((l) => l["msg"] === "listening")).toMatchObject({ host: "127.0.0.1", devSignIn: true });
    expect(await accepts("127.0.0.1", g.port)).toBe(true);
    const external = externalAddress();
    if (external) expect(await accepts(external, g.port), `reachable on ${external}`).toBe(false);
    // HOST set explicitly is honoured.
    const open = await startGateway(freshPrefix("dev-host"), { ...DEV, HOST: "0.0.0.0" });
    expect(open.logs.find((l) => l["msg"] === "listening")).toMatchObject({ host: "0.0.0.0" });
    if (external) expect(await accepts(external, open.port)).toBe(true);
  });

  it("npm start (the single node in development mode) listens on 127.0.0.1, not on every interface", async () => {
    const dataDir = embeddedDataDir();
    const node = await spawnNode("apps/single-node/dist/main.js", {
      env: { ...DEV, REDIS_URL: undefined, DATABASE_URL: undefined, CHAT_DATA_DIR: dataDir, PORT: "0", CHAT_WORKER_HTTP_PORT: "0" },
      readyMessage: "started",
      timeoutMs: 60_000,
    });
    expect(node.ready).toMatchObject({ host: "127.0.0.1", devSignIn: true });
    const port = Number(new URL(String(node.ready["url"])).port);
    expect(await accepts("127.0.0.1", port)).toBe(true);
    const external = externalAddress();
    if (external) expect(await accepts(external, port), `reachable on ${external}`).toBe(false);
  });

  it("npm run start:cluster keeps the operator's NODE_ENV: production without CHAT_JWT_SECRET refuses to start", async () => {
    const r = await runScript("apps/local-cluster/dist/main.js", [], { NODE_ENV: "production", PORT: String(await freePort()), CHAT_WORKER_HTTP_PORT: "0" }, 20_000);
    expect(r.code, `still running after 20 s: it forced development mode; stdout: ${r.stdout.slice(-500)}`).not.toBeNull();
    expect(r.code).not.toBe(0);
    expect(r.stderr + r.stdout).toContain("CHAT_JWT_SECRET");
  });
});
