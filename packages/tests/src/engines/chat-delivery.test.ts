import { describe, expect, it } from "vitest";
import { connectReady, engines, sharedEngine, tokenFor, uniqueUser } from "../helpers/index.js";
import { chatMessages, chatPath, noSchemaViolations, notificationsPath, say, UUID_V7 } from "./support.js";

describe.each(engines)("chat delivery (%s engine)", (kind) => {
  const shared = sharedEngine(kind);
  it("delivers a message to alice on one entry point and bob on the other, with every field the protocol defines", async () => {
    const engine = shared();
    const [alice, bob] = [uniqueUser("alice"), uniqueUser("bob")];
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);
    const a = await connectReady(engine.nodes[0], chatPath(bob), ta);
    const b = await connectReady(engine.nodes[1], chatPath(alice), tb);

    const before = Date.now();
    a.send({ type: "chat_message", message: "hello bob", client_id: "c-1" });
    const atA = await a.next("chat_message");
    const atB = await b.next("chat_message");
    expect(atB).toEqual(atA);
    expect(atA).toEqual({
      type: "chat_message",
      id: expect.stringMatching(UUID_V7),
      message: "hello bob",
      multimedia_url: null,
      date_added: expect.any(String),
      from_user: { username: alice },
      to_user: { username: bob },
      room: bob,
      client_id: "c-1",
    });
    const added = Date.parse(String(atA["date_added"]));
    expect(String(atA["date_added"])).toBe(new Date(added).toISOString());
    expect(added).toBeGreaterThanOrEqual(before - 1000);
    expect(added).toBeLessThanOrEqual(Date.now() + 1000);

    // Media only, no client_id, sent by bob: "" as text, no client_id field.
    b.send({ type: "chat_message", message: "", multimedia_url: "https://cdn.example/x.png" });
    const media = await a.next("chat_message");
    expect(await b.next("chat_message")).toEqual(media);
    expect(media).toEqual({
      type: "chat_message",
      id: expect.stringMatching(UUID_V7),
      message: "",
      multimedia_url: "https://cdn.example/x.png",
      date_added: expect.any(String),
      from_user: { username: bob },
      to_user: { username: alice },
      room: alice,
    });
    // Ids are time-ordered.
    expect(String(media["id"]) > String(atA["id"])).toBe(true);
    expect(a.ofType("error")).toEqual([]);
    expect(b.ofType("error")).toEqual([]);
    noSchemaViolations(a, b);
  });

  it("shows every socket of the conversation the same order when both users send at once from both entry points", async () => {
    const engine = shared();
    const [alice, bob] = [uniqueUser("alice"), uniqueUser("bob")];
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);
    const sockets = await Promise.all([
      connectReady(engine.nodes[0], chatPath(bob), ta),
      connectReady(engine.nodes[1], chatPath(bob), ta),
      connectReady(engine.nodes[1], chatPath(alice), tb),
      connectReady(engine.nodes[0], chatPath(alice), tb),
    ]);
    const perSender = 50;
    for (let i = 0; i < perSender; i++) {
      sockets[0]!.send({ type: "chat_message", message: `a${i}` });
      sockets[2]!.send({ type: "chat_message", message: `b${i}` });
    }
    for (const s of sockets) await s.until((f) => f.filter((x) => x.type === "chat_message").length >= 2 * perSender, 10000, "every message");
    const orders = sockets.map((s) => chatMessages(s).map((f) => f["id"]));
    for (const o of orders) expect(o).toEqual(orders[0]);
    expect(new Set(orders[0]).size).toBe(2 * perSender);
    // Each sender's messages keep the order it sent them in.
    const texts = chatMessages(sockets[0]!).map((f) => String(f["message"]));
    expect(texts.filter((m) => m.startsWith("a"))).toEqual(Array.from({ length: perSender }, (_, i) => `a${i}`));
    expect(texts.filter((m) => m.startsWith("b"))).toEqual(Array.from({ length: perSender }, (_, i) => `b${i}`));
    for (const s of sockets) expect(s.ofType("error")).toEqual([]);
    noSchemaViolations(...sockets);
  });

  it("gives a third user's sockets nothing of the conversation", async () => {
    const engine = shared();
    const [alice, bob, carol] = [uniqueUser("alice"), uniqueUser("bob"), uniqueUser("carol")];
    const [ta, tb, tc] = await Promise.all([tokenFor(alice), tokenFor(bob), tokenFor(carol)]);
    const a = await connectReady(engine.nodes[0], chatPath(bob), ta);
    const b = await connectReady(engine.nodes[1], chatPath(alice), tb);
    // Carol has a chat socket to each of them and notification sockets, on both entry points.
    const cToAlice = await connectReady(engine.nodes[1], chatPath(alice), tc);
    const cToBob = await connectReady(engine.nodes[0], chatPath(bob), tc);
    const cAll = await connectReady(engine.nodes[0], notificationsPath(), tc);
    const cFromAlice = await connectReady(engine.nodes[1], notificationsPath(alice), tc);
    const cFromBob = await connectReady(engine.nodes[0], notificationsPath(bob), tc);

    await say(a, "for bob only");
    await say(b, "for alice only");
    a.send({ type: "read_messages" });
    await b.until((f) => f.filter((x) => x.type === "chat_message").length === 2, 5000, "both messages at bob");

    // Markers sent afterwards to carol in each conversation: the first thing after the greetings.
    const fromAlice = await say(await connectReady(engine.nodes[1], chatPath(carol), ta), "alice to carol");
    await cToAlice.until((f) => f.some((x) => x.type === "chat_message"), 5000, "alice's marker");
    expect(chatMessages(cToAlice)).toEqual([fromAlice]);
    // One notification at a time, so each carries the total right after its message.
    await cAll.until((f) => f.some((x) => x.type === "new_message_notification"), 10000, "alice's notification");
    const fromBob = await say(await connectReady(engine.nodes[0], chatPath(carol), tb), "bob to carol");
    await cToBob.until((f) => f.some((x) => x.type === "chat_message"), 5000, "bob's marker");
    expect(chatMessages(cToBob)).toEqual([fromBob]);

    await cAll.until((f) => f.filter((x) => x.type === "new_message_notification").length === 2, 10000, "two notifications");
    expect(cAll.frames).toEqual([
      { type: "unread_count", unread_count: 0 },
      { type: "new_message_notification", unread_count: 1 },
      { type: "new_message_notification", unread_count: 2 },
    ]);
    await cFromAlice.until((f) => f.length >= 4, 10000, "alice's notification");
    await cFromBob.until((f) => f.length >= 4, 10000, "bob's notification");
    for (const [c, marker] of [[cFromAlice, fromAlice], [cFromBob, fromBob]] as const) {
      expect(c.frames).toEqual([
        { type: "single_conversation_unread_count", unread_count: 0 },
        { type: "single_conversation_new_message_notification" },
        { type: "single_conversation_unread_count", unread_count: 1 },
        { type: "single_conversation_last_message", last_message: marker["message"], last_datetime: marker["date_added"] },
      ]);
    }
    const everything = JSON.stringify([cToAlice, cToBob, cAll, cFromAlice, cFromBob].map((c) => c.frames));
    expect(everything).not.toContain("for bob only");
    expect(everything).not.toContain("for alice only");
    noSchemaViolations(a, b, cToAlice, cToBob, cAll, cFromAlice, cFromBob);
  });
});
