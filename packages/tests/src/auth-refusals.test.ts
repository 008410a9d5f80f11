import WebSocket from "ws";
import { describe, expect, it, onTestFinished } from "vitest";
import {
  JWT_SECRET,
  TestClient,
  connectReady,
  freshPrefix,
  openSocket,
  runScript,
  refusedUpgrade,
  sharedGateway,
  startGateway,
  tokenFor,
  uniqueUser,
  unsignedToken,
} from "./helpers/index.js";

function expectRefusalBody(body: Record<string, unknown>): void {
  expect(typeof body["error"], `body ${JSON.stringify(body)} has a string "error"`).toBe("string");
  expect(String(body["error"]).length).toBeGreaterThan(0);
  expect(typeof body["message"], `body ${JSON.stringify(body)} has a string "message"`).toBe("string");
  expect(String(body["message"]).length).toBeGreaterThan(0);
}

const OTHER_SECRET = "a-completely-different-secret-0123456789";

/** Tokens that must never open a socket; each builder gets the username the token claims to be. */
const badTokens: [string, (user: string) => Promise<string> | string][] = [
  ["a malformed token (not a JWT)", () => "not-a-jwt"],
  ["a malformed token (three garbage segments)", () => "abc.def.ghi"],
  ["a token with a truncated signature", async (u) => (await tokenFor(u)).slice(0, -6)],
  ["a token signed with the wrong secret", (u) => tokenFor(u, { secret: OTHER_SECRET })],
  ["an expired token", (u) => tokenFor(u, { expiresInSeconds: -60 })],
  ["a not-yet-valid token (nbf in the future)", (u) => tokenFor(u, { notBeforeSeconds: 3600 })],
  ["an unsigned token (alg none)", (u) => unsignedToken(u)],
  ["an HS512 token with the right secret", (u) => tokenFor(u, { alg: "HS512" })],
  ["an HS384 token with the right secret", (u) => tokenFor(u, { alg: "HS384" })],
  ["a token without sub", () => tokenFor(undefined)],
  ['a token whose sub is "a b"', () => tokenFor("a b")],
  ['a token whose sub is "x:y"', () => tokenFor("x:y")],
  ["a token whose sub is 151 characters", () => tokenFor("A".repeat(151))],
  ['a token whose sub is "notifications"', () => tokenFor("notifications")],
  ["a token whose sub is empty", () => tokenFor("")],
  ["a token without exp (it would never expire)", (u) => tokenFor(u, { noExp: true })],
  ["a token issued 2 minutes in the future (iat)", (u) => tokenFor(u, { issuedAtOffsetSeconds: 120, expiresInSeconds: 3600 })],
];


/** One gateway with the default settings for every test that needs nothing else: each has users of its own. */
const gateway = sharedGateway("auth");

describe("upgrade authentication", () => {
  it("refuses an upgrade without any token with 401 and a JSON body", async () => {
    const g = await gateway();
    const bob = uniqueUser("bob");
    for (const [url, headers] of [
      [`${g.url}/ws/${bob}/`, {}],
      [`${g.url}/ws/${bob}/?token=`, {}],
      [`${g.url}/ws/${bob}/?other=1`, {}],
      [`${g.url}/ws/${bob}/`, { Authorization: "Bearer " }],
      [`${g.url}/ws/${bob}/`, { Authorization: "Basic dXNlcjpwYXNz" }],
      [`${g.url}/ws/notifications/`, {}],
      [`${g.url}/ws/notifications/${bob}/`, {}],
    ] as [string, Record<string, string>][]) {
      const r = await refusedUpgrade(url, headers);
      expect(r.status, `${url} ${JSON.stringify(headers)}`).toBe(401);
      expectRefusalBody(r.body);
    }
  });

  it.each(badTokens)("refuses %s with 401, given as ?token= or as Authorization: Bearer", async (_what, build) => {
    const g = await gateway();
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const token = await build(alice);
    for (const path of [`/ws/${bob}/`, "/ws/notifications/", `/ws/notifications/${bob}/`]) {
      const viaQuery = await refusedUpgrade(`${g.url}${path}?token=${encodeURIComponent(token)}`);
      expect(viaQuery.status, `${path} ?token=`).toBe(401);
      expectRefusalBody(viaQuery.body);
      const viaHeader = await refusedUpgrade(`${g.url}${path}`, { Authorization: `Bearer ${token}` });
      expect(viaHeader.status, `${path} Authorization`).toBe(401);
      expectRefusalBody(viaHeader.body);
    }
    // The same gateway takes a good token on the same path: the refusal was about the token.
    const ok = await connectReady(g.url, `/ws/${bob}/`, await tokenFor(alice));
    expect(ok.frames[0]).toMatchObject({ type: "online_user_list" });
  });

  it("accepts a token given as ?token= and identifies the user by its sub", async () => {
    const g = await gateway();
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const a = await connectReady(g.url, `/ws/${bob}/`, await tokenFor(alice));
    expect(a.frames[0]).toEqual({ type: "online_user_list", users: [alice] });
    a.send({ type: "chat_message", message: "via query", client_id: "q1" });
    expect(await a.next("chat_message")).toMatchObject({ from_user: { username: alice }, to_user: { username: bob }, client_id: "q1" });
    expect(a.schemaViolations).toEqual([]);
  });

  it("accepts a token given as Authorization: Bearer on every endpoint", async () => {
    const g = await gateway();
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const headers = { Authorization: `Bearer ${await tokenFor(alice)}` };
    const chat = await openSocket(`${g.url}/ws/${bob}/`, headers);
    await chat.until((f) => f.length > 0, 5000, "first event");
    expect(chat.frames[0]).toEqual({ type: "online_user_list", users: [alice] });
    chat.send({ type: "chat_message", message: "via header", client_id: "h1" });
    expect(await chat.next("chat_message")).toMatchObject({ from_user: { username: alice }, to_user: { username: bob }, client_id: "h1" });

    const all = await openSocket(`${g.url}/ws/notifications/`, headers);
    expect(await all.next()).toMatchObject({ type: "unread_count" });
    const one = await openSocket(`${g.url}/ws/notifications/${bob}/`, headers);
    expect(await one.next()).toMatchObject({ type: "single_conversation_unread_count" });
    // A lower-case scheme is still a Bearer token.
    const lower = await openSocket(`${g.url}/ws/${bob}`, { Authorization: `bearer ${await tokenFor(alice)}` });
    await lower.until((f) => f.length > 0, 5000, "first event");
    for (const c of [chat, all, one, lower]) expect(c.schemaViolations).toEqual([]);
  });

  it("accepts usernames at the edge of the rules (150 characters, @.+-_)", async () => {
    const g = await gateway();
    const long = `L${uniqueUser("x")}`.padEnd(150, "z");
    const odd = uniqueUser("john.doe+chat@x-y");
    expect(long).toHaveLength(150);
    const a = await connectReady(g.url, `/ws/${encodeURIComponent(odd)}/`, await tokenFor(long));
    expect(a.frames[0]).toEqual({ type: "online_user_list", users: [long] });
    const b = await connectReady(g.url, `/ws/${long}/`, await tokenFor(odd));
    expect(b.frames[0]).toMatchObject({ type: "online_user_list" });
    expect((b.frames[0]!["users"] as string[]).sort()).toEqual([long, odd].sort());
  });
});

describe("upgrade paths", () => {
  it.each([
    ["an invalid username (space)", () => "/ws/a%20b/"],
    ["an invalid username (colon)", () => "/ws/x:y/"],
    ["an invalid username (151 characters)", () => `/ws/${"A".repeat(151)}/`],
    ["an invalid username (non-ASCII)", () => "/ws/%C3%BC/"],
    ["the reserved username as a conversation", () => "/ws/notifications/notifications/"],
    ["the reserved username groups as a conversation", () => "/ws/groups/"],
    ["the reserved username groups as a conversation's notifications", () => "/ws/notifications/groups/"],
    ["an invalid username on the conversation notifications", () => "/ws/notifications/a%20b/"],
    ["a 151-character username on the conversation notifications", () => `/ws/notifications/${"B".repeat(151)}`],
    ["a chat with oneself", (self: string) => `/ws/${self}/`],
    ["a chat with oneself without trailing slash", (self: string) => `/ws/${self}`],
    ["conversation notifications with oneself", (self: string) => `/ws/notifications/${self}/`],
    ["conversation notifications with oneself without trailing slash", (self: string) => `/ws/notifications/${self}`],
    ["/ws/", () => "/ws/"],
    ["/ws/a/b/c", () => "/ws/a/b/c"],
    ["/ws/a/b/c/", () => "/ws/a/b/c/"],
    ["/ws/notifications/a/b", () => "/ws/notifications/a/b"],
  ])("refuses %s with 400 and a JSON body, even with a valid token", async (_what, path) => {
    const g = await gateway();
    const alice = uniqueUser("alice");
    const token = await tokenFor(alice);
    const p = path(alice);
    const viaQuery = await refusedUpgrade(`${g.url}${p}?token=${token}`);
    expect(viaQuery.status).toBe(400);
    expectRefusalBody(viaQuery.body);
    const viaHeader = await refusedUpgrade(`${g.url}${p}`, { Authorization: `Bearer ${token}` });
    expect(viaHeader.status).toBe(400);
    expectRefusalBody(viaHeader.body);
  });

  it("makes the trailing slash optional on all three endpoints", async () => {
    const g = await gateway();
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const token = await tokenFor(alice);
    const cases: [string, string][] = [
      [`/ws/${bob}/`, "online_user_list"],
      [`/ws/${bob}`, "online_user_list"],
      ["/ws/notifications/", "unread_count"],
      ["/ws/notifications", "unread_count"],
      [`/ws/notifications/${bob}/`, "single_conversation_unread_count"],
      [`/ws/notifications/${bob}`, "single_conversation_unread_count"],
    ];
    for (const [path, first] of cases) {
      const c = await connectReady(g.url, path, token);
      expect(c.frames[0]?.type, path).toBe(first);
      expect(c.schemaViolations).toEqual([]);
    }
  });
});

describe("secrets in logs", () => {
  it("never logs the JWT secret or any token, refused or accepted", async () => {
    const g = await startGateway(freshPrefix("logs"), { LOG_LEVEL: "debug", CHAT_DRAIN_WINDOW_MS: "0" });
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const tokens = [
      await tokenFor(alice),
      await tokenFor(bob),
      await tokenFor(alice, { secret: OTHER_SECRET }),
      await tokenFor(alice, { expiresInSeconds: -60 }),
      await tokenFor(alice, { notBeforeSeconds: 3600 }),
      await tokenFor(alice, { alg: "HS512" }),
      await tokenFor("a b"),
      unsignedToken(alice),
    ];
    const [good, goodBob, ...bad] = tokens as [string, string, ...string[]];
    for (const t of bad) {
      expect((await refusedUpgrade(`${g.url}/ws/${bob}/?token=${encodeURIComponent(t)}`)).status).toBe(401);
      expect((await refusedUpgrade(`${g.url}/ws/${bob}/`, { Authorization: `Bearer ${t}` })).status).toBe(401);
    }
    expect((await refusedUpgrade(`${g.url}/ws/${alice}/?token=${good}`)).status).toBe(400);
    expect((await refusedUpgrade(`${g.url}/ws/a%20b/`, { Authorization: `Bearer ${good}` })).status).toBe(400);
    const a = await connectReady(g.url, `/ws/${bob}/`, good);
    const b = await openSocket(`${g.url}/ws/${alice}/`, { Authorization: `Bearer ${goodBob}` });
    await b.until((f) => f.length > 0, 5000, "first event");
    a.send({ type: "chat_message", message: "hi", client_id: "log-1" });
    await b.next("chat_message");
    a.send("not json");
    await a.next("error");
    await a.close();
    await b.close();
    expect(await g.stop("SIGTERM")).toBe(0);

    expect(g.logs.some((l) => l["msg"] === "listening")).toBe(true);
    expect(g.logs.length).toBeGreaterThan(3);
    const text = JSON.stringify(g.logs);
    expect(text).not.toContain(JWT_SECRET);
    expect(text).not.toContain(OTHER_SECRET);
    for (const t of tokens) {
      expect(text).not.toContain(t);
      // No part of a token either: its payload or its signature.
      for (const part of t.split(".").slice(1)) if (part.length > 8) expect(text).not.toContain(part);
    }
  });
});

describe("token lifetime (exp required, iat not in the future)", () => {
  async function apiStatus(g: { port: number }, token: string): Promise<{ status: number; body: Record<string, unknown> }> {
    const res = await fetch(`http://127.0.0.1:${g.port}/api/conversations`, { headers: { authorization: `Bearer ${token}` } });
    return { status: res.status, body: (await res.json()) as Record<string, unknown> };
  }

  it("refuses a token without exp, or issued more than a minute ahead, on the HTTP API too; accepts a little clock skew", async () => {
    const g = await gateway();
    const alice = uniqueUser("alice");
    const noExp = await apiStatus(g, await tokenFor(alice, { noExp: true }));
    expect(noExp).toEqual({ status: 401, body: { error: "token_invalid", message: expect.stringContaining("exp") } });
    const ahead = await apiStatus(g, await tokenFor(alice, { issuedAtOffsetSeconds: 120 }));
    expect(ahead).toEqual({ status: 401, body: { error: "token_invalid", message: expect.stringContaining("iat") } });
    // An issuer whose clock is 30 s ahead of ours is still fine.
    expect((await apiStatus(g, await tokenFor(alice, { issuedAtOffsetSeconds: 30 }))).status).toBe(200);
    const skewed = await connectReady(g.url, `/ws/${uniqueUser("bob")}/`, await tokenFor(alice, { issuedAtOffsetSeconds: 30 }));
    expect(skewed.frames[0]).toMatchObject({ type: "online_user_list" });
  });

  it("accepts a token without exp when CHAT_JWT_ALLOW_NO_EXP=true, and keeps its socket open", async () => {
    const g = await startGateway(freshPrefix("lifetime-noexp"), { CHAT_JWT_ALLOW_NO_EXP: "true" });
    const alice = uniqueUser("alice");
    const token = await tokenFor(alice, { noExp: true });
    expect((await apiStatus(g, token)).status).toBe(200);
    const c = await connectReady(g.url, `/ws/${uniqueUser("bob")}/`, token);
    expect(c.frames[0]).toEqual({ type: "online_user_list", users: [alice] });
    // A future iat is refused all the same.
    expect((await refusedUpgrade(`${g.url}/ws/${uniqueUser("bob")}/?token=${await tokenFor(alice, { issuedAtOffsetSeconds: 120 })}`)).status).toBe(401);
  });

  it("accepts the tokens of every signer in the repository (token CLI, loadgen, k6, the test helper)", async () => {
    const g = await gateway();
    const { signToken: loadgenToken } = await import("../../../apps/loadgen/dist/token.js");
    const { signHs256, tokenClaims } = await import("../../../k6/lib/jwt.js");
    const { createHmac } = await import("node:crypto");
    const cli = await runScript("apps/gateway/dist/token-cli.js", ["cli_user"], { CHAT_JWT_SECRET: JWT_SECRET });
    expect(cli.code, cli.stderr).toBe(0);
    const tokens: Record<string, string> = {
      "npm run token": cli.stdout.trim(),
      loadgen: loadgenToken("loadgen_user", JWT_SECRET),
      k6: signHs256(
        tokenClaims("k6_user", Math.floor(Date.now() / 1000), 600),
        JWT_SECRET,
        (secret: string, data: string) => createHmac("sha256", secret).update(data).digest("base64url"),
        (text: string) => Buffer.from(text).toString("base64url"),
      ),
      "test helper": await tokenFor("helper_user"),
    };
    for (const [signer, token] of Object.entries(tokens)) {
      expect((await apiStatus(g, token)).status, signer).toBe(200);
    }
  });
});
