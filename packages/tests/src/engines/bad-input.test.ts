import { describe, expect, it } from "vitest";
import { CloseCode, ErrorCode } from "@chat/protocol";
import { connectReady, engines, sharedEngine, tokenFor, uniqueUser, waitFor, type Frame } from "../helpers/index.js";
import { asHistoryMessage, chatMessages, chatPath, history, noSchemaViolations, notificationsPath, say } from "./support.js";

const MAX_MESSAGE_LENGTH = 10;
const MAX_FRAME_BYTES = 1024;
const limits = { CHAT_MAX_MESSAGE_LENGTH: String(MAX_MESSAGE_LENGTH), CHAT_MAX_FRAME_BYTES: String(MAX_FRAME_BYTES) };
const emoji = "\u{1F600}";

/** [what, raw text frame, expected code, client_id echoed in the error (undefined: none)] */
const badFrames: [string, string, string, string | undefined][] = [
  ["text that is not JSON", '{"type":"chat_message","message":"hi"', ErrorCode.invalid_json, undefined],
  ["a JSON array", '[{"type":"chat_message","message":"hi","client_id":"c-arr"}]', ErrorCode.invalid_frame, undefined],
  ["JSON null", "null", ErrorCode.invalid_frame, undefined],
  ["an unknown type", '{"type":"shout","message":"hi","client_id":"c-unknown"}', ErrorCode.unknown_type, "c-unknown"],
  ["a server event type", '{"type":"user_join","user":"x","client_id":"c-server"}', ErrorCode.unknown_type, "c-server"],
  ["a missing type", '{"message":"hi","client_id":"c-notype"}', ErrorCode.unknown_type, "c-notype"],
  ["message as a number", '{"type":"chat_message","message":5,"client_id":"c-num"}', ErrorCode.invalid_frame, "c-num"],
  ["an unknown extra field", '{"type":"chat_message","message":"hi","extra":1,"client_id":"c-extra"}', ErrorCode.invalid_frame, "c-extra"],
  ["a bad multimedia_url_expiration", '{"type":"chat_message","message":"hi","multimedia_url_expiration":"soon","client_id":"c-exp"}', ErrorCode.invalid_frame, "c-exp"],
  ["a NUL character in the text", '{"type":"chat_message","message":"a\\u0000b","client_id":"c-nul"}', ErrorCode.invalid_frame, "c-nul"],
  ["read_messages with an extra field", '{"type":"read_messages","client_id":"c-read"}', ErrorCode.invalid_frame, "c-read"],
  ["an empty message", '{"type":"chat_message","message":"","client_id":"c-empty"}', ErrorCode.empty_message, "c-empty"],
  ["11 characters (limit 10)", JSON.stringify({ type: "chat_message", message: "a".repeat(11), client_id: "c-long" }), ErrorCode.message_too_long, "c-long"],
  ["11 emoji (limit 10 characters)", JSON.stringify({ type: "chat_message", message: emoji.repeat(11), client_id: "c-emoji" }), ErrorCode.message_too_long, "c-emoji"],
  ["a frame over CHAT_MAX_FRAME_BYTES", JSON.stringify({ type: "chat_message", message: "x".repeat(MAX_FRAME_BYTES), client_id: "c-big" }), ErrorCode.frame_too_large, "c-big"],
];

describe.each(engines)("bad input (%s engine)", (kind) => {
  const shared = sharedEngine(kind, limits);
  it("answers each malformed frame with a clear error, keeps the socket usable, and loses none of the valid messages in between", async () => {
    const engine = shared();
    const [alice, bob] = [uniqueUser("alice"), uniqueUser("bob")];
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);
    const a = await connectReady(engine.nodes[0], chatPath(bob), ta);
    const b = await connectReady(engine.nodes[1], chatPath(alice), tb);
    while ((await a.next("user_join"))["user"] !== bob);

    // One frame at a time: the next frame on alice's socket is the answer to what she sent.
    const good: Frame[] = [];
    for (const [what, raw, code, clientId] of badFrames) {
      a.send(raw);
      const err = await a.next();
      expect(err, what).toEqual({ type: "error", code, message: expect.any(String), ...(clientId === undefined ? {} : { client_id: clientId }) });
      expect(String(err["message"]).length, what).toBeGreaterThan(0);
      good.push(await say(a, `ok-${good.length}`));
    }
    // A binary frame, even one holding a valid message.
    a.ws.send(Buffer.from(JSON.stringify({ type: "chat_message", message: "binary", client_id: "c-bin" })), { binary: true });
    expect(await a.next()).toEqual({ type: "error", code: ErrorCode.binary_not_supported, message: expect.any(String) });
    // At the limit passes: 10 emoji, 10 letters.
    good.push(await say(a, emoji.repeat(10)));
    good.push(await say(a, "b".repeat(10)));

    // Then everything at once, bad and good interleaved: every good one gets through, in order.
    for (let i = 0; i < badFrames.length; i++) {
      a.send(badFrames[i]![1]);
      a.send({ type: "chat_message", message: `burst-${i}`, client_id: `burst-${i}` });
    }
    await a.until((f) => f.filter((x) => x.type === "chat_message").length === good.length + badFrames.length, 10000, "the burst's echoes");
    const burst = chatMessages(a).slice(good.length);
    expect(burst.map((f) => f["message"])).toEqual(badFrames.map((_, i) => `burst-${i}`));
    good.push(...burst);
    await a.until((f) => f.filter((x) => x.type === "error").length === 2 * badFrames.length + 1, 10000, "the burst's errors");

    expect(a.closeCode).toBeNull();
    // Bob saw exactly the good ones, no error, and the history holds exactly those.
    await b.until((f) => f.filter((x) => x.type === "chat_message").length >= good.length, 10000, "every good message at bob");
    expect(chatMessages(b)).toEqual(good);
    expect(b.ofType("error")).toEqual([]);
    await waitFor(async () => expect(await history(engine.http[1], alice, tb, 200)).toHaveLength(good.length), 10000);
    expect(await history(engine.http[0], bob, ta, 200)).toEqual(good.map(asHistoryMessage).reverse());
    noSchemaViolations(a, b);
  });

  it(`drops (${CloseCode.dropped}) a socket that sends a frame over 16x CHAT_MAX_FRAME_BYTES, and keeps serving the others`, async () => {
    const engine = shared();
    const [alice, bob] = [uniqueUser("alice"), uniqueUser("bob")];
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);
    const a = await connectReady(engine.nodes[0], chatPath(bob), ta);
    const b = await connectReady(engine.nodes[1], chatPath(alice), tb);
    a.send(JSON.stringify({ type: "chat_message", message: "h".repeat(16 * MAX_FRAME_BYTES + 16), client_id: "c-huge" }));
    expect(await a.closed).toBe(CloseCode.dropped);
    const again = await connectReady(engine.nodes[0], chatPath(bob), ta);
    const after = await say(again, "after");
    await b.until((f) => f.some((x) => x.type === "chat_message"), 5000, "the message after");
    expect(chatMessages(b)).toEqual([after]);
    await waitFor(async () => expect(await history(engine.http[1], alice, tb)).toEqual([asHistoryMessage(after)]), 10000);
  });

  it("answers every frame on notification sockets with an error and keeps them open and counting", async () => {
    const engine = shared();
    const [alice, bob] = [uniqueUser("alice"), uniqueUser("bob")];
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);
    const all = await connectReady(engine.nodes[0], notificationsPath(), ta);
    const one = await connectReady(engine.nodes[1], notificationsPath(bob), ta);
    for (const n of [all, one]) {
      await n.next();
      for (const frame of [JSON.stringify({ type: "chat_message", message: "hi bob" }), JSON.stringify({ type: "read_messages" })]) {
        n.send(frame);
        expect(await n.next(), frame).toEqual({ type: "error", code: ErrorCode.unknown_type, message: expect.any(String) });
      }
      for (const frame of ["not json", "[]"]) {
        n.send(frame);
        expect(await n.next(), frame).toEqual({ type: "error", code: expect.any(String), message: expect.any(String) });
      }
    }
    // Nothing was sent: bob's chat is empty; his message still reaches alice's notification sockets.
    const b = await connectReady(engine.nodes[0], chatPath(alice), tb);
    const m = await say(b, "from bob");
    expect(await all.next(undefined, 10000)).toEqual({ type: "new_message_notification", unread_count: 1 });
    expect((await one.next(undefined, 10000)).type).toBe("single_conversation_new_message_notification");
    expect(await history(engine.http[0], bob, ta)).toEqual([asHistoryMessage(m)]);
    expect(all.closeCode).toBeNull();
    noSchemaViolations(all, one, b);
  });
});
