import { describe, expect, it } from "vitest";
import { CloseCode, ErrorCode } from "@chat/protocol";
import {
  connectReady,
  messagesBetween,
  sharedDeployment,
  testSql,
  tokenFor,
  uniqueUser,
  waitFor,
  type TestClient,
} from "./helpers/index.js";

const MAX_MESSAGE_LENGTH = 10;
const MAX_FRAME_BYTES = 1024;
const limits = { CHAT_MAX_MESSAGE_LENGTH: String(MAX_MESSAGE_LENGTH), CHAT_MAX_FRAME_BYTES: String(MAX_FRAME_BYTES) };

// Register the pool's teardown at file level (the first query happens inside a test).
testSql();

/** One gateway with small limits and a worker for the whole file: every test has users of its own. */
const deployment = sharedDeployment("bad-frames", limits);

/** Alice's chat socket to bob (plus bob's, to see deliveries), on the file's gateway. */
async function setup() {
  const g = (await deployment()).gateway;
  const alice = uniqueUser("alice");
  const bob = uniqueUser("bob");
  const a = await connectReady(g.url, `/ws/${bob}/`, await tokenFor(alice));
  const b = await connectReady(g.url, `/ws/${alice}/`, await tokenFor(bob));
  // Settle presence events first, so the next frame on `a` is the answer to what it sends.
  while ((await a.next("user_join"))["user"] !== bob);
  while ((await b.next("user_join"))["user"] !== bob);
  return { g, alice, bob, a, b };
}

/** Sends a valid message on `sender` and waits until every given socket has it. */
async function sendValid(sender: TestClient, message: string, clientId: string, also: TestClient[] = []) {
  sender.send({ type: "chat_message", message, client_id: clientId });
  const own = await sender.next("chat_message");
  expect(own).toMatchObject({ message, client_id: clientId });
  for (const s of also) expect(await s.next("chat_message")).toEqual(own);
  return own;
}

/** Waits until exactly `expected` are persisted between the two users, then checks nothing else is. */
async function expectPersistedOnly(alice: string, bob: string, expected: { content: string; client_id: string | null }[]) {
  const rows = await waitFor(async () => {
    const r = await messagesBetween(alice, bob);
    expect(r.length).toBeGreaterThanOrEqual(expected.length);
    return r;
  });
  expect(rows.map((r) => ({ content: r.content, client_id: r.client_id }))).toEqual(expected);
}

const emoji = "\u{1F600}";

/** [what, raw text frame, expected code, client_id expected in the error (undefined: absent)] */
const badTextFrames: [string, string, string, string | undefined][] = [
  ["text that is not JSON", '{"type":"chat_message","message":"hi"', ErrorCode.invalid_json, undefined],
  ["plain words", "hello bob", ErrorCode.invalid_json, undefined],
  ["a JSON array", '[{"type":"chat_message","message":"hi","client_id":"c-arr"}]', ErrorCode.invalid_frame, undefined],
  ["a JSON number", "42", ErrorCode.invalid_frame, undefined],
  ["JSON null", "null", ErrorCode.invalid_frame, undefined],
  ["a JSON string", '"chat_message"', ErrorCode.invalid_frame, undefined],
  ["an unknown type", '{"type":"shout","message":"hi","client_id":"c-unknown"}', ErrorCode.unknown_type, "c-unknown"],
  ["a type that is a server event", '{"type":"user_join","user":"x","client_id":"c-server"}', ErrorCode.unknown_type, "c-server"],
  ["a missing type", '{"message":"hi","client_id":"c-notype"}', ErrorCode.unknown_type, "c-notype"],
  ["a non-string type", '{"type":1,"message":"hi","client_id":"c-typenum"}', ErrorCode.unknown_type, "c-typenum"],
  ["message as a number", '{"type":"chat_message","message":5,"client_id":"c-num"}', ErrorCode.invalid_frame, "c-num"],
  ["multimedia_url as an object", '{"type":"chat_message","message":"hi","multimedia_url":{},"client_id":"c-url"}', ErrorCode.invalid_frame, "c-url"],
  ["an unknown extra field", '{"type":"chat_message","message":"hi","extra":1,"client_id":"c-extra"}', ErrorCode.invalid_frame, "c-extra"],
  ["a __proto__ key", '{"type":"chat_message","message":"hi","__proto__":{"admin":true},"client_id":"c-proto"}', ErrorCode.invalid_frame, "c-proto"],
  ["a bad multimedia_url_expiration", '{"type":"chat_message","message":"hi","multimedia_url_expiration":"soon","client_id":"c-exp"}', ErrorCode.invalid_frame, "c-exp"],
  ["read_messages with an extra field", '{"type":"read_messages","client_id":"c-read"}', ErrorCode.invalid_frame, "c-read"],
  ["an empty message without multimedia_url", '{"type":"chat_message","message":"","client_id":"c-empty"}', ErrorCode.empty_message, "c-empty"],
  ["no message and an empty multimedia_url", '{"type":"chat_message","multimedia_url":"","client_id":"c-empty2"}', ErrorCode.empty_message, "c-empty2"],
  ["a message of 11 characters (limit 10)", JSON.stringify({ type: "chat_message", message: "a".repeat(11), client_id: "c-long" }), ErrorCode.message_too_long, "c-long"],
  ["a message of 11 emoji (limit 10 characters)", JSON.stringify({ type: "chat_message", message: emoji.repeat(11), client_id: "c-emoji" }), ErrorCode.message_too_long, "c-emoji"],
  [
    "a frame over CHAT_MAX_FRAME_BYTES",
    JSON.stringify({ type: "chat_message", message: "x".repeat(MAX_FRAME_BYTES) }),
    ErrorCode.frame_too_large,
    undefined,
  ],
  [
    "a frame over CHAT_MAX_FRAME_BYTES in bytes but not in characters",
    JSON.stringify({ type: "chat_message", message: "\u00e9".repeat(600) }),
    ErrorCode.frame_too_large,
    undefined,
  ],
  [
    "a frame over CHAT_MAX_FRAME_BYTES that has a client_id",
    JSON.stringify({ type: "chat_message", message: "x".repeat(MAX_FRAME_BYTES), client_id: "c-big" }),
    ErrorCode.frame_too_large,
    "c-big",
  ],
];

describe("bad frames on a chat socket", () => {
  it.each(badTextFrames)("answers %s with an error, keeps the socket open and persists nothing", async (_what, raw, code, clientId) => {
    const { alice, bob, a, b } = await setup();
    a.send(raw);
    const err = await a.next();
    expect(err).toEqual({ type: "error", code, message: expect.any(String), ...(clientId === undefined ? {} : { client_id: clientId }) });
    expect(String(err["message"]).length).toBeGreaterThan(0);

    // The socket stays open: a valid message afterwards goes through to both users.
    await sendValid(a, "still here", "ok-1", [b]);
    expect(a.closeCode).toBeNull();
    await expectPersistedOnly(alice, bob, [{ content: "still here", client_id: "ok-1" }]);
    // Nobody else saw the bad frame, and the sender got nothing but the error and its own message.
    expect(b.ofType("chat_message")).toHaveLength(1);
    expect(b.ofType("error")).toHaveLength(0);
    expect(a.frames.map((f) => f.type)).toEqual(["online_user_list", "user_join", "user_join", "error", "chat_message"]);
    expect(a.schemaViolations).toEqual([]);
  });

  it("counts the message limit in characters: 10 emoji and 10 letters pass, several bad frames in a row change nothing", async () => {
    const { alice, bob, a, b } = await setup();
    await sendValid(a, emoji.repeat(10), "ok-emoji", [b]);
    for (const [, raw, code, clientId] of badTextFrames) {
      a.send(raw);
      const err = await a.next();
      expect(err, raw.slice(0, 80)).toMatchObject({ type: "error", code });
      if (clientId === undefined) expect(err).not.toHaveProperty("client_id");
    }
    await sendValid(a, "a".repeat(10), "ok-letters", [b]);
    await expectPersistedOnly(alice, bob, [
      { content: emoji.repeat(10), client_id: "ok-emoji" },
      { content: "a".repeat(10), client_id: "ok-letters" },
    ]);
    expect(b.ofType("error")).toHaveLength(0);
  });

  it("answers a binary frame with binary_not_supported, even when it holds a valid message", async () => {
    const { alice, bob, a, b } = await setup();
    a.ws.send(Buffer.from(JSON.stringify({ type: "chat_message", message: "in binary", client_id: "c-bin" })), { binary: true });
    const err = await a.next();
    expect(err).toMatchObject({ type: "error", code: ErrorCode.binary_not_supported, message: expect.any(String) });
    await sendValid(a, "text", "ok-bin", [b]);
    await expectPersistedOnly(alice, bob, [{ content: "text", client_id: "ok-bin" }]);
    expect(a.schemaViolations).toEqual([]);
  });

  it(`closes the socket with ${CloseCode.dropped} on a frame over 16x CHAT_MAX_FRAME_BYTES`, async () => {
    const { a } = await setup();
    a.send(JSON.stringify({ type: "chat_message", message: "h".repeat(16 * MAX_FRAME_BYTES + 16), client_id: "c-huge" }));
    expect(await a.closed).toBe(CloseCode.dropped);
  });

  it("drops a socket that sends a frame over 16x CHAT_MAX_FRAME_BYTES, persists nothing and keeps serving others", async () => {
    const { g, alice, bob, a, b } = await setup();
    a.send(JSON.stringify({ type: "chat_message", message: "h".repeat(16 * MAX_FRAME_BYTES + 16), client_id: "c-huge" }));
    await a.closed;
    expect(a.ofType("chat_message")).toHaveLength(0);
    // Just under the hard limit is still answered with frame_too_large, not a close.
    const again = await connectReady(g.url, `/ws/${bob}/`, await tokenFor(alice));
    again.send(JSON.stringify({ type: "chat_message", message: "h".repeat(16 * MAX_FRAME_BYTES - 64) }));
    expect(await again.next("error")).toMatchObject({ code: ErrorCode.frame_too_large });
    await sendValid(again, "after", "ok-huge", [b]);
    await expectPersistedOnly(alice, bob, [{ content: "after", client_id: "ok-huge" }]);
    expect(b.ofType("chat_message").map((f) => f["message"])).toEqual(["after"]);
    expect(b.closeCode).toBeNull();
  });
});

describe("frames on notification sockets", () => {
  const endpoints: [string, string, string][] = [
    ["/ws/notifications/", "unread_count", "new_message_notification"],
    ["/ws/notifications/{other}/", "single_conversation_unread_count", "single_conversation_unread_count"],
  ];

  async function notificationSocket(pathTemplate: string) {
    const g = (await deployment()).gateway;
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const n = await connectReady(g.url, pathTemplate.replace("{other}", bob), await tokenFor(alice));
    await n.next();
    return { g, alice, bob, n };
  }

  it.each(endpoints)("answers every frame on %s with unknown_type, keeps it open and persists nothing", async (pathTemplate, counter, onMessage) => {
    const { g, alice, bob, n } = await notificationSocket(pathTemplate);
    expect(n.frames[0]).toEqual({ type: counter, unread_count: 0 });
    for (const frame of [JSON.stringify({ type: "chat_message", message: "hi bob" }), JSON.stringify({ type: "read_messages" })]) {
      n.send(frame);
      expect(await n.next(), frame).toEqual({ type: "error", code: ErrorCode.unknown_type, message: expect.any(String) });
    }
    for (const frame of ["not json", "[]"]) {
      n.send(frame);
      expect(await n.next(), frame).toEqual({ type: "error", code: expect.any(String), message: expect.any(String) });
    }

    // Still open and subscribed: a message from bob reaches it as a notification with the persisted count.
    const b = await connectReady(g.url, `/ws/${alice}/`, await tokenFor(bob));
    await sendValid(b, "from bob", "b-1");
    await n.until((f) => f.some((x) => x.type === onMessage && x["unread_count"] === 1), 10000, "notification");
    expect(n.closeCode).toBeNull();
    await expectPersistedOnly(alice, bob, [{ content: "from bob", client_id: "b-1" }]);
    expect(n.schemaViolations).toEqual([]);
  });

  it.each(endpoints)("echoes the client_id of a frame refused on %s", async (pathTemplate) => {
    const { n } = await notificationSocket(pathTemplate);
    n.send({ type: "chat_message", message: "hi bob", client_id: "n-1" });
    expect(await n.next()).toEqual({ type: "error", code: ErrorCode.unknown_type, message: expect.any(String), client_id: "n-1" });
  });
});
