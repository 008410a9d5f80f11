import { describe, expect, it } from "vitest";
import { connectReady, engines, sharedEngine, tokenFor, uniqueUser, type TestClient } from "../helpers/index.js";
import { chatPath, history, noSchemaViolations, notificationsPath } from "./support.js";

const typingOf = (c: TestClient) => c.frames.filter((f) => f.type === "typing");

describe.each(engines)("typing indicators (%s engine)", (kind) => {
  const shared = sharedEngine(kind);

  it("reaches the other member's chat sockets on every node, never the typist's own sockets, other conversations or notifications, and is not stored", async () => {
    const engine = shared();
    const [alice, bob, carol] = [uniqueUser("alice"), uniqueUser("bob"), uniqueUser("carol")];
    const [ta, tb, tc] = await Promise.all([tokenFor(alice), tokenFor(bob), tokenFor(carol)]);
    const a1 = await connectReady(engine.nodes[0], chatPath(bob), ta);
    // Alice's second tab, on the other entry point.
    const a2 = await connectReady(engine.nodes[1], chatPath(bob), ta);
    const b1 = await connectReady(engine.nodes[1], chatPath(alice), tb);
    const b2 = await connectReady(engine.nodes[0], chatPath(alice), tb);
    const bobNotes = await connectReady(engine.nodes[0], notificationsPath(alice), tb);
    // Another conversation of alice's.
    const c = await connectReady(engine.nodes[0], chatPath(alice), tc);
    const aToCarol = await connectReady(engine.nodes[1], chatPath(carol), ta);

    a1.send({ type: "typing" });
    for (const b of [b1, b2]) expect(await b.next("typing")).toEqual({ type: "typing", user: alice, room: bob });
    // A message after it, on the same channel, is the barrier: whoever got the message would have
    // got the typing frame before it.
    a1.send({ type: "chat_message", message: "after typing", client_id: "after" });
    for (const s of [a1, a2, b1, b2]) await s.next("chat_message");
    expect(typingOf(a1)).toEqual([]);
    expect(typingOf(a2)).toEqual([]);
    expect([...typingOf(b1), ...typingOf(b2)]).toHaveLength(2);

    // Bob types back: alice's two tabs get it, carol's conversation with alice does not.
    b2.send({ type: "typing" });
    for (const a of [a1, a2]) expect(await a.next("typing")).toEqual({ type: "typing", user: bob, room: alice });
    aToCarol.send({ type: "chat_message", message: "to carol", client_id: "carol-barrier" });
    await c.next("chat_message");
    b1.send({ type: "chat_message", message: "barrier", client_id: "b-barrier" });
    await bobNotes.until((f) => f.some((e) => e.type === "single_conversation_last_message" || e.type === "single_conversation_new_message_notification"), 10_000, "bob's notifications after alice's message");
    expect(typingOf(c)).toEqual([]);
    expect(typingOf(aToCarol)).toEqual([]);
    expect(typingOf(bobNotes)).toEqual([]);

    // Only the two messages are stored.
    await expect.poll(async () => (await history(engine.http[0], bob, ta)).map((m: { content: string }) => m.content).sort(), { timeout: 10_000 }).toEqual(["after typing", "barrier"]);
    for (const s of [a1, a2, b1, b2, bobNotes, c, aToCarol]) expect(s.ofType("error")).toEqual([]);
    noSchemaViolations(a1, a2, b1, b2, bobNotes, c, aToCarol);
  });

  it("passes a few typing frames a second per user and drops the rest without an error", async () => {
    const engine = shared();
    const [alice, bob] = [uniqueUser("alice"), uniqueUser("bob")];
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);
    const a = await connectReady(engine.nodes[0], chatPath(bob), ta);
    const b = await connectReady(engine.nodes[1], chatPath(alice), tb);
    // A client that sends one per keystroke: 30 at once.
    for (let i = 0; i < 30; i++) a.send({ type: "typing" });
    a.send({ type: "chat_message", message: "done typing", client_id: "done" });
    await b.next("chat_message");
    const passed = typingOf(b).length;
    // A burst of 3, plus what refilled (2 a second) while the 30 arrived.
    expect(passed).toBeGreaterThanOrEqual(1);
    expect(passed).toBeLessThanOrEqual(4);
    expect(a.ofType("error")).toEqual([]);
    // A malformed one is refused like any bad frame.
    a.send({ type: "typing", user: "mallory" });
    expect(await a.next("error")).toMatchObject({ type: "error", code: "invalid_frame" });
    noSchemaViolations(a, b);
  });
});
