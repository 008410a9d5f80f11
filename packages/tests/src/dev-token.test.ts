import { jwtVerify } from "jose";
import { describe, expect, it } from "vitest";
import { connectReady, dropPrefixAtEnd, freshPrefix, JWT_SECRET, startGateway, uniqueUser, type Gateway } from "./helpers/index.js";

// POST /api/dev/token (development gateways only) and the browser client's static files at `/`.

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
    const g = await startGateway(prefix, { NODE_ENV: "development" });
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");

    for (const path of ["/api/dev/token", "/api/dev/token/"]) {
      const r = await postToken(g, JSON.stringify({ username: alice }), path);
      expect(r.status, path).toBe(200);
      expect(Object.keys(r.body)).toEqual(["token"]);
      const token = String(r.body["token"]);
      const { payload, protectedHeader } = await jwtVerify(token, new TextEncoder().encode(JWT_SECRET), { algorithms: ["HS256"] });
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
    const g = await startGateway(prefix, { NODE_ENV: "development" });
    for (const username of ["", "a:b", "a|b", "has space", "x".repeat(151), "notifications", 42, null]) {
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

  it("sets aud and iss when the gateway requires them", async () => {
    const prefix = freshPrefix("devtoken-aud");
    dropPrefixAtEnd(prefix);
    const g = await startGateway(prefix, { NODE_ENV: "development", CHAT_JWT_AUDIENCE: "chat-clients", CHAT_JWT_ISSUER: "chat-auth" });
    const r = await postToken(g, JSON.stringify({ username: "alice" }));
    expect(r.status).toBe(200);
    const token = String(r.body["token"]);
    const { payload } = await jwtVerify(token, new TextEncoder().encode(JWT_SECRET), { audience: "chat-clients", issuer: "chat-auth" });
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
