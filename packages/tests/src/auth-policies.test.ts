import WebSocket from "ws";
import { SignJWT, decodeJwt } from "jose";
import { describe, expect, it, onTestFinished } from "vitest";
import { CloseCode } from "@chat/protocol";
import {
  JWT_SECRET,
  TestClient,
  connectReady,
  freshPrefix,
  openSocket,
  refusedUpgrade,
  startGateway,
  tokenFor,
  uniqueUser,
  waitFor,
  type Gateway,
} from "./helpers/index.js";

/** Opens a socket with request headers (Origin, Authorization); resolves once its first event arrived. */
async function connectWith(url: string, headers: Record<string, string>): Promise<TestClient> {
  const client = await openSocket(url, headers);
  await client.until((f) => f.length > 0, 10000, "first event");
  return client;
}

const httpBase = (g: Gateway) => `http://127.0.0.1:${g.port}`;

async function getConversations(g: Gateway, token: string, via: "header" | "query") {
  const res = await fetch(
    via === "query" ? `${httpBase(g)}/api/conversations?token=${encodeURIComponent(token)}` : `${httpBase(g)}/api/conversations`,
    via === "header" ? { headers: { Authorization: `Bearer ${token}` } } : {},
  );
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

describe("a token that expires while the socket is open", () => {
  it(`closes chat and notification sockets with ${CloseCode.token_expired} at the token's exp, not before and within about a second`, async () => {
    const g = await startGateway(freshPrefix("expiry"));
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const shortLived = await tokenFor(alice, { expiresInSeconds: 2 });
    const expMs = decodeJwt(shortLived).exp! * 1000;
    const b = await connectReady(g.url, `/ws/${alice}/`, await tokenFor(bob));
    const sockets = [
      await connectReady(g.url, `/ws/${bob}/`, shortLived),
      await connectReady(g.url, "/ws/notifications/", shortLived),
      await connectReady(g.url, `/ws/notifications/${bob}/`, shortLived),
    ];
    const closedAt = sockets.map((s) => s.closed.then(() => Date.now()));
    // Fully usable until then.
    const chat = sockets[0]!;
    chat.send({ type: "chat_message", message: "before expiry", client_id: "exp-1" });
    expect(await b.next("chat_message")).toMatchObject({ message: "before expiry", client_id: "exp-1" });

    // A deliberate wait for the expiry, bounded: the sockets must be closed a little after exp.
    await waitFor(() => sockets.every((s) => s.closeCode !== null), Math.max(0, expMs - Date.now()) + 5000, 20);
    const codes = await Promise.all(sockets.map((s) => s.closed));
    expect(codes).toEqual([CloseCode.token_expired, CloseCode.token_expired, CloseCode.token_expired]);
    for (const at of await Promise.all(closedAt)) {
      expect(at, "closed before the token expired").toBeGreaterThanOrEqual(expMs - 50);
      expect(at - expMs, "closed more than ~1 s after the token expired").toBeLessThanOrEqual(1500);
    }
    // The rest of the conversation sees alice leave; bob's own socket (long-lived token) stays.
    await b.until((f) => f.some((x) => x.type === "user_leave" && x["user"] === alice), 5000, "user_leave of alice");
    expect(b.closeCode).toBeNull();
    // The same token can no longer open a socket; a fresh one can.
    const again = await refusedUpgrade(`${g.url}/ws/${bob}/?token=${shortLived}`);
    expect(again).toEqual({ status: 401, body: { error: "token_expired", message: expect.any(String) } });
    const fresh = await connectReady(g.url, `/ws/${bob}/`, await tokenFor(alice));
    fresh.send({ type: "chat_message", message: "after reconnect", client_id: "exp-2" });
    expect(await b.next("chat_message")).toMatchObject({ message: "after reconnect", client_id: "exp-2" });
  }, 30_000);
});

describe("allowed Origins (CHAT_ALLOWED_ORIGINS)", () => {
  const ALLOWED = "https://chat.example";
  const SECOND = "https://admin.chat.example";

  it("refuses browsers from other Origins with 403 and lets the allowed Origins and native clients (no Origin) in", async () => {
    const g = await startGateway(freshPrefix("origins"), { CHAT_ALLOWED_ORIGINS: `${ALLOWED}, ${SECOND}` });
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const token = await tokenFor(alice);
    const paths = [`/ws/${bob}/`, "/ws/notifications/", `/ws/notifications/${bob}/`];
    const forbidden = [
      "https://evil.example",
      "https://chat.example.evil.example",
      "https://evilchat.example",
      "http://chat.example",
      "https://chat.example:8443",
      "null",
    ];
    for (const origin of forbidden) {
      for (const path of paths) {
        const viaQuery = await refusedUpgrade(`${g.url}${path}?token=${token}`, { Origin: origin });
        expect(viaQuery, `${origin} ${path}`).toEqual({ status: 403, body: { error: "forbidden_origin", message: expect.any(String) } });
      }
      const viaHeader = await refusedUpgrade(`${g.url}/ws/${bob}/`, { Origin: origin, Authorization: `Bearer ${token}` });
      expect(viaHeader.status, origin).toBe(403);
    }
    for (const origin of [ALLOWED, SECOND]) {
      for (const path of paths) {
        const c = await connectWith(`${g.url}${path}?token=${token}`, { Origin: origin });
        expect(c.frames[0]?.type).toMatch(/^(online_user_list|unread_count|single_conversation_unread_count)$/);
      }
    }
    // A native client sends no Origin at all.
    const native = await connectReady(g.url, `/ws/${bob}/`, token);
    native.send({ type: "chat_message", message: "native", client_id: "o-1" });
    expect(await native.next("chat_message")).toMatchObject({ message: "native", client_id: "o-1" });
    // The allowed Origin still needs a valid token.
    expect((await refusedUpgrade(`${g.url}/ws/${bob}/`, { Origin: ALLOWED })).status).toBe(401);
  });

  it("without CHAT_ALLOWED_ORIGINS lets in only the page's own origin (Origin host = Host) and clients without Origin", async () => {
    const g = await startGateway(freshPrefix("origins-default"));
    const bob = uniqueUser("bob");
    const token = await tokenFor(uniqueUser("alice"));
    const own = `http://127.0.0.1:${g.port}`;
    for (const origin of ["https://evil.example", `http://localhost:${g.port}`, `http://127.0.0.1:${g.port + 1}`, "http://127.0.0.1", "null", "garbage"]) {
      for (const path of [`/ws/${bob}/`, "/ws/notifications/", `/ws/notifications/${bob}/`]) {
        const r = await refusedUpgrade(`${g.url}${path}?token=${token}`, { Origin: origin });
        expect(r, `${origin} ${path}`).toEqual({ status: 403, body: { error: "forbidden_origin", message: expect.any(String) } });
      }
    }
    // The browser client served by this node.
    const c = await connectWith(`${g.url}/ws/${bob}/?token=${token}`, { Origin: own });
    expect(c.frames[0]).toMatchObject({ type: "online_user_list" });
    const native = await connectReady(g.url, `/ws/${bob}/`, token);
    expect(native.frames[0]).toMatchObject({ type: "online_user_list" });
  });

  it("allows any Origin with CHAT_ALLOWED_ORIGINS=*", async () => {
    const g = await startGateway(freshPrefix("origins-any"), { CHAT_ALLOWED_ORIGINS: "*" });
    const c = await connectWith(`${g.url}/ws/${uniqueUser("bob")}/?token=${await tokenFor(uniqueUser("alice"))}`, { Origin: "https://evil.example" });
    expect(c.frames[0]).toMatchObject({ type: "online_user_list" });
  });

  it("lets the page's own origin in also when CHAT_ALLOWED_ORIGINS lists others", async () => {
    const g = await startGateway(freshPrefix("origins-own"), { CHAT_ALLOWED_ORIGINS: ALLOWED });
    const c = await connectWith(`${g.url}/ws/${uniqueUser("bob")}/?token=${await tokenFor(uniqueUser("alice"))}`, { Origin: `http://127.0.0.1:${g.port}` });
    expect(c.frames[0]).toMatchObject({ type: "online_user_list" });
  });
});

describe("audience and issuer (CHAT_JWT_AUDIENCE, CHAT_JWT_ISSUER)", () => {
  const AUD = "chat-clients";
  const ISS = "https://auth.chat.example";
  const key = new TextEncoder().encode(JWT_SECRET);

  async function signed(sub: string, claims: { aud?: string | string[]; iss?: string }, secret = key): Promise<string> {
    const jwt = new SignJWT({}).setProtectedHeader({ alg: "HS256", typ: "JWT" }).setSubject(sub).setIssuedAt().setExpirationTime("1h");
    if (claims.aud !== undefined) jwt.setAudience(claims.aud);
    if (claims.iss !== undefined) jwt.setIssuer(claims.iss);
    return jwt.sign(secret);
  }

  const refused: [string, { aud?: string | string[]; iss?: string }][] = [
    ["neither aud nor iss", {}],
    ["the right aud but no iss", { aud: AUD }],
    ["the right iss but no aud", { iss: ISS }],
    ["a wrong aud", { aud: "other-service", iss: ISS }],
    ["a wrong iss", { aud: AUD, iss: "https://evil.example" }],
    ["both wrong", { aud: "other-service", iss: "https://evil.example" }],
    ["an aud that differs in case", { aud: "Chat-Clients", iss: ISS }],
    ["an aud that only starts with the right one", { aud: `${AUD}-admin`, iss: ISS }],
    ["an iss with a trailing slash", { aud: AUD, iss: `${ISS}/` }],
    ["an aud list without the right one", { aud: ["a", "b"], iss: ISS }],
  ];

  it("refuses socket upgrades and HTTP API requests whose token lacks the configured aud/iss with 401; accepts the right ones", async () => {
    const g = await startGateway(freshPrefix("aud-iss"), { CHAT_JWT_AUDIENCE: AUD, CHAT_JWT_ISSUER: ISS });
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    for (const [what, claims] of refused) {
      const token = await signed(alice, claims);
      for (const path of [`/ws/${bob}/`, "/ws/notifications/", `/ws/notifications/${bob}/`]) {
        const r = await refusedUpgrade(`${g.url}${path}?token=${token}`);
        expect(r, `${what} on ${path}`).toEqual({ status: 401, body: { error: "token_invalid", message: expect.any(String) } });
      }
      expect((await refusedUpgrade(`${g.url}/ws/${bob}/`, { Authorization: `Bearer ${token}` })).status, what).toBe(401);
      for (const via of ["header", "query"] as const) {
        const res = await getConversations(g, token, via);
        expect(res, `GET /api/conversations with ${what} (${via})`).toEqual({ status: 401, body: { error: "token_invalid", message: expect.any(String) } });
      }
    }
    // The right claims but the wrong key is still refused.
    const forged = await signed(alice, { aud: AUD, iss: ISS }, new TextEncoder().encode("not-the-secret-of-this-cluster-000"));
    expect((await refusedUpgrade(`${g.url}/ws/${bob}/?token=${forged}`)).status).toBe(401);
    expect((await getConversations(g, forged, "header")).status).toBe(401);

    for (const claims of [{ aud: AUD, iss: ISS }, { aud: ["another-service", AUD], iss: ISS }]) {
      const token = await signed(alice, claims);
      const chat = await connectReady(g.url, `/ws/${bob}/`, token);
      expect(chat.frames[0]).toEqual({ type: "online_user_list", users: [alice] });
      await connectWith(`${g.url}/ws/notifications/`, { Authorization: `Bearer ${token}` });
      for (const via of ["header", "query"] as const) {
        const res = await getConversations(g, token, via);
        expect(res, `GET /api/conversations with ${JSON.stringify(claims)} (${via})`).toEqual({
          status: 200,
          body: { conversations: expect.any(Array), next_cursor: null },
        });
      }
      await chat.close();
    }
  }, 60_000);

  it("ignores aud and iss when neither is configured", async () => {
    const g = await startGateway(freshPrefix("aud-iss-off"));
    const alice = uniqueUser("alice");
    for (const claims of [{}, { aud: "anything", iss: "anyone" }]) {
      const token = await signed(alice, claims);
      await connectReady(g.url, `/ws/${uniqueUser("bob")}/`, token);
      expect((await getConversations(g, token, "header")).status).toBe(200);
    }
  });
});
