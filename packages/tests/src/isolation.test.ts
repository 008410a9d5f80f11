import { randomBytes } from "node:crypto";
import { request } from "node:http";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { ErrorCode } from "@chat/protocol";
import {
  connectReady,
  freshPrefix,
  messagesBetween,
  sharedDeployment,
  startGateway,
  startWorker,
  testSql,
  tokenFor,
  uniqueUser,
  waitFor,
  type Frame,
  type Gateway,
  type TestClient,
} from "./helpers/index.js";

testSql();

/**
 * A request with the path exactly as given (a WebSocket client or fetch would normalize `..`, `\\`,
 * `%2E` and friends first). Resolves to 101 when a socket would open, else the status and JSON body.
 */
function rawRequest(g: Gateway, rawPath: string, headers: Record<string, string> = {}): Promise<{ status: number; body: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port: g.port, path: rawPath, headers });
    req.on("upgrade", (_res, socket) => {
      socket.destroy();
      resolve({ status: 101, body: {} });
    });
    req.on("response", (res) => {
      let body = "";
      res.on("data", (d: Buffer) => (body += d.toString()));
      res.on("end", () => {
        let parsed: Record<string, unknown>;
        try {
          parsed = JSON.parse(body) as Record<string, unknown>;
        } catch {
          parsed = { raw: body };
        }
        resolve({ status: res.statusCode ?? 0, body: parsed });
      });
    });
    req.on("error", reject);
    req.end();
  });
}

const rawUpgrade = (g: Gateway, rawPath: string) =>
  rawRequest(g, rawPath, { Connection: "Upgrade", Upgrade: "websocket", "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": randomBytes(16).toString("base64") });

/** Usernames that look like Redis patterns, carry separators, SQL or lookalike characters: all invalid. */
const CRAFTED = [
  "*", "?", "[a]", "a*", "*:*", "a:b", "a|b", "room:*", "user:alice", "a/b", "a\\b", "a b", "a\nb", "a\tb", "a\u0000b",
  "%2A", "a%b", "a;b", "a,b", "a#b", "a$b", "a'b", 'a"b', "x'--", "x';DROP TABLE messages;--", "1 OR 1=1",
  "\u0430lice" /* Cyrillic a */, "\uff41lice" /* fullwidth a */, "alice\u200b" /* zero-width space */, "\u212a" /* Kelvin sign */,
  "\u01c5", "\u00e9", "b".repeat(150) + "c",
];

/** Raw forms a client could put in the path besides the percent-encoded one. */
function pathForms(name: string): string[] {
  const forms = [encodeURIComponent(name), encodeURIComponent(encodeURIComponent(name))];
  if (/^[\x21-\x7e]+$/.test(name) && !/[/?#%]/.test(name)) forms.push(name);
  if (name === "*") forms.push("%2A", "%2a");
  return [...new Set(forms)];
}

describe("crafted usernames", () => {
  it("refuses usernames that look like channel patterns, separators, SQL or lookalikes: 400 in paths, 401 in tokens", async () => {
    const g = await startGateway(freshPrefix("crafted"));
    const alice = uniqueUser("alice");
    const token = await tokenFor(alice);
    for (const name of CRAFTED) {
      for (const form of pathForms(name)) {
        for (const path of [`/ws/${form}/`, `/ws/${form}`, `/ws/notifications/${form}/`]) {
          const r = await rawUpgrade(g, `${path}?token=${token}`);
          expect(r, `path ${JSON.stringify(path)} (${JSON.stringify(name)})`).toEqual({ status: 400, body: { error: "bad_path", message: expect.any(String) } });
        }
        const api = await rawRequest(g, `/api/rooms/${form}/messages`, { Authorization: `Bearer ${token}` });
        expect(api, `GET /api/rooms/${form}/messages`).toEqual({ status: 400, body: { error: "bad_username", message: expect.any(String) } });
      }
      const asSubject = await tokenFor(name);
      for (const path of [`/ws/${uniqueUser("bob")}/`, "/ws/notifications/"]) {
        const r = await rawUpgrade(g, `${path}?token=${asSubject}`);
        expect(r, `token sub ${JSON.stringify(name)}`).toEqual({ status: 401, body: { error: "token_subject_invalid", message: expect.any(String) } });
      }
      const api = await rawRequest(g, "/api/conversations", { Authorization: `Bearer ${asSubject}` });
      expect(api, `GET /api/conversations as ${JSON.stringify(name)}`).toEqual({ status: 401, body: { error: "token_subject_invalid", message: expect.any(String) } });
    }
  }, 60_000);

  it("treats dot segments as plain usernames of their own conversation, never as another endpoint", async () => {
    // `.` and `..` match the documented username rule (letters, digits, @.+-_), so they may be
    // refused or be a conversation with exactly that user, but nothing else.
    const g = await startGateway(freshPrefix("dots"));
    const alice = uniqueUser("alice");
    const token = await tokenFor(alice);
    for (const path of ["/ws/../", "/ws/%2E%2E/", "/ws/./", "/ws/%2e/", "/ws/notifications/../", `/ws/${alice}/../x/`, "/ws/x/%2E%2E/"]) {
      const r = await rawUpgrade(g, `${path}?token=${token}`);
      expect([101, 400], `${path}: ${JSON.stringify(r)}`).toContain(r.status);
    }
  });
});

/** Waits for a final marker on every socket (all published after what came before on its channels). */
async function barrier(pairs: { x: TestClient; y: TestClient }[], label: string) {
  for (const [i, p] of pairs.entries()) p.x.send({ type: "chat_message", message: `${label}-${i}`, client_id: `${label}-${i}` });
  for (const [i, p] of pairs.entries()) {
    for (const s of [p.x, p.y]) await s.until((f) => f.some((m) => m.type === "chat_message" && m["client_id"] === `${label}-${i}`), 10000, `${label}-${i}`);
  }
}

const texts = (c: TestClient) => c.ofType("chat_message").map((m) => m["message"] as string);
const presenceUsers = (c: TestClient) =>
  c.frames.flatMap((f) => (f.type === "online_user_list" ? (f["users"] as string[]) : f.type === "user_join" || f.type === "user_leave" ? [f["user"] as string] : []));

describe("conversations whose names would collide under a naive key scheme", () => {
  it("keeps (a, a.b) and (a.a, b)-shaped conversations apart for every allowed separator character", async () => {
    const prefix = freshPrefix("collide");
    const [g] = await Promise.all([startGateway(prefix), startWorker(prefix)]);
    const base = `u${randomBytes(4).toString("hex")}`;
    const tail = `z${randomBytes(4).toString("hex")}`;
    // Joined with the separator, both conversations give the same string: base<sep>base<sep>tail.
    const pairs: { sep: string; x: string; y: string }[] = [];
    for (const sep of [".", "+", "@", "-", "_"]) {
      pairs.push({ sep, x: base, y: `${base}${sep}${tail}` });
      pairs.push({ sep, x: `${base}${sep}${base}`, y: tail });
    }
    const sockets = await Promise.all(
      pairs.map(async (p) => ({
        ...p,
        x: await connectReady(g.url, `/ws/${encodeURIComponent(p.y)}/`, await tokenFor(p.x)),
        y: await connectReady(g.url, `/ws/${encodeURIComponent(p.x)}/`, await tokenFor(p.y)),
        yNotes: await connectReady(g.url, `/ws/notifications/${encodeURIComponent(p.x)}/`, await tokenFor(p.y)),
        xName: p.x,
        yName: p.y,
      })),
    );
    sockets.forEach((s, i) => s.x.send({ type: "chat_message", message: `only for pair ${i}`, client_id: `c-${i}` }));
    // Each recipient's conversation count reaches 1 (its own message, once persisted).
    for (const s of sockets) {
      await s.yNotes.until((f) => f.some((n) => n.type === "single_conversation_unread_count" && n["unread_count"] === 1), 15000, `count of ${s.yName}`);
    }
    await barrier(sockets, "end");
    sockets.forEach((s, i) => {
      const what = `pair ${i} (${s.xName}, ${s.yName})`;
      expect(texts(s.x), what).toEqual([`only for pair ${i}`, `end-${i}`]);
      expect(texts(s.y), what).toEqual([`only for pair ${i}`, `end-${i}`]);
      for (const m of [...s.x.ofType("chat_message"), ...s.y.ofType("chat_message")]) {
        expect(m).toMatchObject({ from_user: { username: s.xName }, to_user: { username: s.yName }, room: s.yName });
      }
      for (const c of [s.x, s.y]) expect(presenceUsers(c).filter((u) => u !== s.xName && u !== s.yName), what).toEqual([]);
      const counts = s.yNotes.ofType("single_conversation_unread_count").map((n) => n["unread_count"]);
      expect(counts.every((n) => n === 0 || n === 1 || n === 2), `${what}: counts ${JSON.stringify(counts)}`).toBe(true);
      expect(s.yNotes.ofType("single_conversation_last_message").every((n) => n["last_message"] === `only for pair ${i}` || n["last_message"] === `end-${i}`), what).toBe(true);
    });
    // And in Postgres, each conversation holds its own two messages.
    await waitFor(async () => {
      for (const [i, s] of sockets.entries()) {
        expect((await messagesBetween(s.xName, s.yName)).map((r) => r.content)).toEqual([`only for pair ${i}`, `end-${i}`]);
      }
    }, 15000);
  }, 60_000);

  it("serves usernames with every allowed special character (a.b+c@d-e_f)", async () => {
    const prefix = freshPrefix("specials");
    const [g] = await Promise.all([startGateway(prefix), startWorker(prefix)]);
    const odd = `a.b+c@d-e_f.${randomBytes(3).toString("hex")}`;
    const bob = uniqueUser("bob");
    const a = await connectReady(g.url, `/ws/${bob}/`, await tokenFor(odd));
    const b = await connectReady(g.url, `/ws/${encodeURIComponent(odd)}/`, await tokenFor(bob));
    // Unencoded in the path too (every character is allowed in a URL path as is).
    const b2 = await connectReady(g.url, `/ws/${odd}/`, await tokenFor(bob));
    a.send({ type: "chat_message", message: "special", client_id: "sp-1" });
    for (const c of [a, b, b2]) expect(await c.next("chat_message")).toMatchObject({ from_user: { username: odd }, to_user: { username: bob }, room: bob });
    await waitFor(async () => expect((await messagesBetween(odd, bob)).map((r) => r.from_user)).toEqual([odd]), 15000);
  });
});

describe("a third user", () => {
  it("never sees another conversation's messages or counts, whichever of its endpoints names the other users", async () => {
    const prefix = freshPrefix("third");
    const [g1, g2] = await Promise.all([startGateway(prefix), startGateway(prefix), startWorker(prefix)]);
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const carol = uniqueUser("carol");
    const carolToken = await tokenFor(carol);
    const a = await connectReady(g1.url, `/ws/${bob}/`, await tokenFor(alice));
    const aNotes = await connectReady(g2.url, `/ws/notifications/${bob}/`, await tokenFor(alice));
    const b = await connectReady(g2.url, `/ws/${alice}/`, await tokenFor(bob));
    const watchers = {
      aliceChat: await connectReady(g1.url, `/ws/${alice}/`, carolToken),
      bobChat: await connectReady(g2.url, `/ws/${bob}/`, carolToken),
      aliceCount: await connectReady(g1.url, `/ws/notifications/${alice}/`, carolToken),
      bobCount: await connectReady(g2.url, `/ws/notifications/${bob}/`, carolToken),
      total: await connectReady(g2.url, "/ws/notifications/", carolToken),
    };
    for (let i = 0; i < 3; i++) b.send({ type: "chat_message", message: `secret ${i}`, client_id: `s-${i}` });
    a.send({ type: "chat_message", message: "secret reply", client_id: "s-r" });
    await aNotes.until((f) => f.some((n) => n.type === "single_conversation_unread_count" && n["unread_count"] === 3), 15000, "alice's count 3");
    await a.until((f) => f.filter((m) => m.type === "chat_message").length === 4, 10000, "4 messages");
    // Then alice writes to carol: on carol's channels this comes after anything of alice and bob's.
    const ac = await connectReady(g2.url, `/ws/${carol}/`, await tokenFor(alice));
    ac.send({ type: "chat_message", message: "for carol", client_id: "fc" });
    await watchers.aliceCount.until((f) => f.some((n) => n.type === "single_conversation_last_message"), 15000, "carol's notification");
    await watchers.total.until((f) => f.some((n) => n.type === "new_message_notification"), 15000, "carol's total");
    await watchers.aliceChat.until((f) => f.some((m) => m.type === "chat_message"), 10000, "carol's message");

    expect(texts(watchers.aliceChat)).toEqual(["for carol"]);
    expect(texts(watchers.bobChat)).toEqual([]);
    const strip = (frames: Frame[]) => frames.map((f) => (f.type === "single_conversation_last_message" ? { ...f, last_datetime: "<date>" } : f));
    expect(strip(watchers.aliceCount.frames)).toEqual([
      { type: "single_conversation_unread_count", unread_count: 0 },
      { type: "single_conversation_new_message_notification" },
      { type: "single_conversation_unread_count", unread_count: 1 },
      { type: "single_conversation_last_message", last_message: "for carol", last_datetime: "<date>" },
    ]);
    expect(watchers.bobCount.frames).toEqual([{ type: "single_conversation_unread_count", unread_count: 0 }]);
    expect(watchers.total.frames).toEqual([
      { type: "unread_count", unread_count: 0 },
      { type: "new_message_notification", unread_count: 1 },
    ]);
    for (const c of [watchers.aliceChat, watchers.bobChat]) {
      for (const u of presenceUsers(c)) expect([carol, alice, bob]).toContain(u);
      expect(c.ofType("online_user_list")[0]).toEqual({ type: "online_user_list", users: [carol] });
    }
    // Carol's two chat sockets are her own conversations: alice's presence there is only alice's socket to carol.
    expect(presenceUsers(watchers.bobChat).filter((u) => u !== carol)).toEqual([]);
    for (const c of Object.values(watchers)) expect(c.schemaViolations).toEqual([]);
  }, 60_000);
});

describe("client_id and message text that could break framing", () => {
  // One gateway and worker for these tests: each has users of its own.
  const deployment = sharedDeployment("framing");
  const nasty: [string, string][] = [
    ["newlines", "line1\nline2\n"],
    ["carriage returns", "cr\rcrlf\r\n"],
    ["line and paragraph separators", "ls\u2028ps\u2029end"],
    ["tabs", "\ttab\tbed\t"],
    ["quotes and backslashes", `"quoted" 'single' \\back\\slash\\ \\n`],
    ["a whole JSON frame", '{"type":"chat_message","message":"injected","client_id":"x"}\n{"type":"user_join","user":"mallory"}'],
    ["an envelope header", "node-1\t*\t1700000000000\n{\"type\":\"user_leave\",\"user\":\"bob\"}"],
    ["control characters", "\u0001\u0007\u001b[31m\u001f\u007f"],
    ["emoji and combining marks", "\u{1F600}\u{1F469}\u200D\u{1F4BB} e\u0301 \u202Ertl\u202C \uFEFF"],
    ["HTML", "</script><script>alert(1)</script>"],
    ["64 emoji", "\u{1F600}".repeat(64)],
  ];

  it.each(nasty)("round-trips %s exactly in client_id and message, to both users and into Postgres", async (_what, value) => {
    const g = (await deployment()).gateway;
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const a = await connectReady(g.url, `/ws/${bob}/`, await tokenFor(alice));
    const b = await connectReady(g.url, `/ws/${alice}/`, await tokenFor(bob));
    a.send({ type: "chat_message", message: value, client_id: value });
    const own = await a.next("chat_message");
    expect(own["message"]).toBe(value);
    expect(own["client_id"]).toBe(value);
    expect(await b.next("chat_message")).toEqual(own);
    // A frame right after it arrives intact and in order: the first did not split or swallow anything.
    a.send({ type: "chat_message", message: "next", client_id: "next" });
    expect(await b.next("chat_message")).toMatchObject({ message: "next", client_id: "next" });
    // An invalid frame with that client_id gets it echoed exactly on the error.
    a.send({ type: "chat_message", message: "", client_id: value });
    expect(await a.next("error")).toEqual({ type: "error", code: ErrorCode.empty_message, message: expect.any(String), client_id: value });
    for (const c of [a, b]) {
      expect(c.ofType("user_join").every((f) => f["user"] === alice || f["user"] === bob)).toBe(true);
      expect(c.ofType("user_leave")).toEqual([]);
      expect(c.schemaViolations).toEqual([]);
    }
    await waitFor(async () => {
      const rows = await messagesBetween(alice, bob);
      expect(rows.map((r) => [r.id, r.content, r.client_id])).toEqual([
        [own["id"], value, value],
        [expect.any(String), "next", "next"],
      ]);
    }, 15000);
  });

  it("echoes arbitrary Unicode client_ids and texts exactly (property, 40 runs)", async () => {
    const seed = Number(process.env["FUZZ_SEED"] ?? Math.floor(Math.random() * 2 ** 31));
    console.log(`isolation round-trip property: seed ${seed}`);
    const g = (await deployment()).gateway;
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const a = await connectReady(g.url, `/ws/${bob}/`, await tokenFor(alice));
    const b = await connectReady(g.url, `/ws/${alice}/`, await tokenFor(bob));
    // Any Unicode scalar value but NUL (NUL and lone surrogates have their own tests in fuzz-frames).
    const unit = fc.oneof(
      fc.constantFrom("\n", "\r", "\t", '"', "\\", "\u2028", "\u2029", "\u0085", "\u{1F600}", "\u202E"),
      fc.integer({ min: 1, max: 0x10ffff }).filter((c) => c < 0xd800 || c > 0xdfff).map((c) => String.fromCodePoint(c)),
    );
    const sent: [string, string][] = [];
    let n = 0;
    await fc.assert(
      fc.asyncProperty(fc.string({ unit, minLength: 1, maxLength: 200 }), fc.string({ unit, minLength: 1, maxLength: 128 }), async (message, clientIdBody) => {
        const clientId = [...`${n++}:${clientIdBody}`].slice(0, 128).join("");
        a.send({ type: "chat_message", message, client_id: clientId });
        const own = await a.next("chat_message");
        expect(own["message"]).toBe(message);
        expect(own["client_id"]).toBe(clientId);
        expect(await b.next("chat_message")).toEqual(own);
        sent.push([message, clientId]);
      }),
      { numRuns: 40, seed, endOnFailure: true },
    );
    await waitFor(async () => {
      const rows = await messagesBetween(alice, bob);
      expect(rows.map((r) => [r.content, r.client_id])).toEqual(sent);
    }, 15000);
  }, 60_000);

  it("never takes two different client_ids for the same one (lone surrogates vs U+FFFD)", async () => {
    // A send whose client_id was already accepted is a retry and stores nothing. Different
    // client_ids must never be confused: each of these is refused, or accepted as its own message.
    const g = (await deployment()).gateway;
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const a = await connectReady(g.url, `/ws/${bob}/`, await tokenFor(alice));
    const ids = ["x\ud800", "x\udbff", "x\ufffd", "x\udc00y"];
    const accepted: string[] = [];
    for (const [i, clientId] of ids.entries()) {
      a.send({ type: "chat_message", message: `distinct ${i}`, client_id: clientId });
      let f = await a.next();
      while (f.type === "user_join" || f.type === "online_user_list") f = await a.next();
      if (f.type === "error") {
        expect(f, JSON.stringify(clientId)).toMatchObject({ code: ErrorCode.invalid_frame });
        continue;
      }
      expect(f, `send ${i} with client_id ${JSON.stringify(clientId)} was answered with another message's echo`).toMatchObject({
        type: "chat_message",
        message: `distinct ${i}`,
        client_id: clientId,
      });
      accepted.push(`distinct ${i}`);
    }
    // The valid one (U+FFFD is an ordinary character) is always accepted.
    expect(accepted).toContain("distinct 2");
    await waitFor(async () => expect((await messagesBetween(alice, bob)).map((r) => r.content)).toEqual(accepted), 15000);
  });

  it("echoes a client_id of 100 emoji (100 characters, within the 128 allowed) on an error about its frame", async () => {
    // docs/protocol.md: client_id is up to 128 characters, echoed on the chat_message and on any error
    // about this frame. The gateway accepts and echoes it on success; it must not drop it on errors.
    const g = (await deployment()).gateway;
    const alice = uniqueUser("alice");
    const a = await connectReady(g.url, `/ws/${uniqueUser("bob")}/`, await tokenFor(alice));
    const clientId = "\u{1F600}".repeat(100);
    const longest = "\u{1F600}".repeat(128);
    a.send({ type: "chat_message", message: "ok", client_id: clientId });
    expect((await a.next("chat_message"))["client_id"]).toBe(clientId);
    for (const frame of [
      { type: "chat_message", message: "", client_id: clientId },
      { type: "chat_message", message: 5, client_id: clientId },
      { type: "shout", client_id: clientId },
      { type: "chat_message", message: "", client_id: longest },
    ]) {
      a.send(frame);
      expect(await a.next("error"), JSON.stringify(frame).slice(0, 60)).toMatchObject({ type: "error", client_id: frame.client_id });
    }
  });
});
