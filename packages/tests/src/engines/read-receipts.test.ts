import { describe, expect, it } from "vitest";
import { connectReady, engines, sharedEngine, tokenFor, uniqueUser, type TestClient } from "../helpers/index.js";
import { asHistoryMessage, chatPath, history, noSchemaViolations, notificationsPath, say } from "./support.js";

const receiptsOf = (c: TestClient) => c.frames.filter((f) => f.type === "read_receipt");

describe.each(engines)("read receipts (%s engine)", (kind) => {
  const shared = sharedEngine(kind);

  it("tells the other side's chat sockets on every node how far the reader read, never the reader's own, and the history says who read what", async () => {
    const engine = shared();
    const [alice, bob] = [uniqueUser("alice"), uniqueUser("bob")];
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);
    const a1 = await connectReady(engine.nodes[0], chatPath(bob), ta);
    // Alice's second tab, on the other entry point.
    const a2 = await connectReady(engine.nodes[1], chatPath(bob), ta);
    const b1 = await connectReady(engine.nodes[1], chatPath(alice), tb);
    const b2 = await connectReady(engine.nodes[0], chatPath(alice), tb);
    const aliceNotes = await connectReady(engine.nodes[0], notificationsPath(bob), ta);

    const m1 = await say(a1, "first");
    const m2 = await say(a1, "second");
    for (const b of [b1, b2]) await b.until((f) => f.some((x) => x["id"] === m2["id"]), 10_000, "bob gets the second message");
    // Not read yet: the history says so.
    await expect.poll(async () => history(engine.http[0], bob, ta), { timeout: 10_000 }).toEqual([m2, m1].map((m) => asHistoryMessage(m)));

    const before = Date.now();
    b1.send({ type: "read_messages" });
    for (const a of [a1, a2]) {
      const receipt = await a.next("read_receipt", 10_000);
      expect(receipt).toEqual({ type: "read_receipt", user: bob, room: alice, last_read_id: m2["id"], read_at: expect.any(String) });
      const at = Date.parse(String(receipt["read_at"]));
      expect(at).toBeGreaterThanOrEqual(before - 1000);
      expect(at).toBeLessThanOrEqual(Date.now());
    }
    // A message after it, on the same channel, is the barrier: a socket of bob's that got the
    // receipt would have got it before this message.
    const m3 = await say(a1, "third, unread");
    for (const b of [b1, b2]) await b.until((f) => f.some((x) => x["id"] === m3["id"]), 10_000, "bob gets the third message");
    expect([...receiptsOf(b1), ...receiptsOf(b2)]).toEqual([]);
    expect(receiptsOf(aliceNotes)).toEqual([]);

    // Both sides' histories: alice's first two messages read by bob, the third not.
    const expected = [asHistoryMessage(m3), asHistoryMessage(m2, { readBy: [bob] }), asHistoryMessage(m1, { readBy: [bob] })];
    await expect.poll(async () => history(engine.http[0], bob, ta), { timeout: 10_000 }).toEqual(expected);
    expect(await history(engine.http[1], alice, tb)).toEqual(expected);

    // Alice reads bob's conversation, where bob sent nothing: bob learns it, with no message to point at.
    a2.send({ type: "read_messages" });
    for (const b of [b1, b2]) expect(await b.next("read_receipt", 10_000)).toEqual({ type: "read_receipt", user: alice, room: bob, last_read_id: null, read_at: expect.any(String) });

    for (const s of [a1, a2, b1, b2, aliceNotes]) expect(s.ofType("error")).toEqual([]);
    noSchemaViolations(a1, a2, b1, b2, aliceNotes);
  });
});
