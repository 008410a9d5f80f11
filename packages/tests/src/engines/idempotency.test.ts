import { describe, expect, it } from "vitest";
import { connectReady, engines, sharedEngine, tokenFor, uniqueUser, waitFor, type Frame, type TestClient } from "../helpers/index.js";
import { asHistoryMessage, chatMessages, chatPath, history, noSchemaViolations, NO_RATE_LIMIT, notificationsPath } from "./support.js";

const echoes = (c: TestClient, clientId: string): Frame[] => chatMessages(c).filter((f) => f["client_id"] === clientId);

describe.each(engines)("idempotent sends with client_id (%s engine)", (kind) => {
  const shared = sharedEngine(kind, NO_RATE_LIMIT);
  it("answers a retry, on the same socket or after a reconnect to the other entry point, with the original and stores nothing new", async () => {
    const engine = shared();
    const [alice, bob] = [uniqueUser("alice"), uniqueUser("bob")];
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);
    const b = await connectReady(engine.nodes[1], chatPath(alice), tb);
    const bAll = await connectReady(engine.nodes[1], notificationsPath(), tb);

    const first = await connectReady(engine.nodes[0], chatPath(bob), ta);
    first.send({ type: "chat_message", message: "hello", client_id: "c-1" });
    const original = await first.next("chat_message");
    // Sent twice on the same socket.
    first.send({ type: "chat_message", message: "hello", client_id: "c-1" });
    expect(await first.next("chat_message")).toEqual(original);
    // The client did not see the echo in time (say), reconnects to the other entry point and sends again.
    await first.close();
    const second = await connectReady(engine.nodes[1], chatPath(bob), ta);
    second.send({ type: "chat_message", message: "hello", client_id: "c-1" });
    expect(await second.next("chat_message")).toEqual(original);
    // A retry whose text changed is still the same send.
    second.send({ type: "chat_message", message: "hello (edited)", client_id: "c-1" });
    expect(await second.next("chat_message")).toEqual(original);

    // A fresh client_id is a new message; bob saw the first one once, then this one. Sent once the
    // first is persisted: two messages committed in one batch both announce the batch's total.
    await bAll.until((f) => f.some((x) => x.type === "new_message_notification"), 10000, "first notification");
    second.send({ type: "chat_message", message: "next", client_id: "c-2" });
    const next = await second.next("chat_message");
    expect(next).toMatchObject({ message: "next", client_id: "c-2" });
    expect(next["id"]).not.toBe(original["id"]);
    await b.until((f) => f.some((x) => x.type === "chat_message" && x["client_id"] === "c-2"), 5000, "c-2 at bob");
    expect(chatMessages(b)).toEqual([original, next]);

    // One message per client_id in the history, and bob counts two unread.
    await waitFor(async () => expect(await history(engine.http[0], bob, ta)).toEqual([next, original].map(asHistoryMessage)), 10000);
    await bAll.until((f) => f.some((x) => x["unread_count"] === 2), 10000, "two unread");
    expect(bAll.frames).toEqual([
      { type: "unread_count", unread_count: 0 },
      { type: "new_message_notification", unread_count: 1 },
      { type: "new_message_notification", unread_count: 2 },
    ]);
    expect((await connectReady(engine.nodes[0], notificationsPath(alice), tb)).frames[0]).toEqual({ type: "single_conversation_unread_count", unread_count: 2 });
    for (const c of [first, second, b]) expect(c.ofType("error")).toEqual([]);
    noSchemaViolations(first, second, b, bAll);
  });

  it("keeps client_ids per sender: two users may use the same one", async () => {
    const engine = shared();
    const [alice, bob, carol] = [uniqueUser("alice"), uniqueUser("bob"), uniqueUser("carol")];
    const [ta, tb, tc] = await Promise.all([tokenFor(alice), tokenFor(bob), tokenFor(carol)]);
    const a = await connectReady(engine.nodes[0], chatPath(bob), ta);
    const c = await connectReady(engine.nodes[1], chatPath(bob), tc);
    const ba = await connectReady(engine.nodes[1], chatPath(alice), tb);
    a.send({ type: "chat_message", message: "from alice", client_id: "same" });
    const fromAlice = await a.next("chat_message");
    c.send({ type: "chat_message", message: "from carol", client_id: "same" });
    const fromCarol = await c.next("chat_message");
    await ba.next("chat_message");
    ba.send({ type: "chat_message", message: "from bob", client_id: "same" });
    const fromBob = await ba.next("chat_message");
    expect(fromAlice).toMatchObject({ message: "from alice", from_user: { username: alice } });
    expect(fromCarol).toMatchObject({ message: "from carol", from_user: { username: carol } });
    expect(fromBob).toMatchObject({ message: "from bob", from_user: { username: bob } });
    expect(new Set([fromAlice["id"], fromCarol["id"], fromBob["id"]]).size).toBe(3);
    await waitFor(async () => {
      expect(await history(engine.http[0], alice, tb)).toEqual([fromBob, fromAlice].map(asHistoryMessage));
      expect(await history(engine.http[1], carol, tb)).toEqual([fromCarol].map(asHistoryMessage));
    }, 10000);
    noSchemaViolations(a, c, ba);
  });

  it("keeps client_ids per conversation: one sender's same client_id to two partners makes two messages, also after a restart", async () => {
    const engine = shared();
    const [alice, bob, carol] = [uniqueUser("alice"), uniqueUser("bob"), uniqueUser("carol")];
    const [ta, tb, tc] = await Promise.all([tokenFor(alice), tokenFor(bob), tokenFor(carol)]);
    const b = await connectReady(engine.nodes[1], chatPath(alice), tb);
    const c = await connectReady(engine.nodes[0], chatPath(alice), tc);
    const toBob = await connectReady(engine.nodes[0], chatPath(bob), ta);
    const toCarol = await connectReady(engine.nodes[1], chatPath(carol), ta);
    toBob.send({ type: "chat_message", message: "for bob", client_id: "c-1" });
    const forBob = await toBob.next("chat_message");
    toCarol.send({ type: "chat_message", message: "for carol", client_id: "c-1" });
    const forCarol = await toCarol.next("chat_message");
    expect(forBob).toMatchObject({ message: "for bob", to_user: { username: bob }, client_id: "c-1" });
    expect(forCarol).toMatchObject({ message: "for carol", to_user: { username: carol }, client_id: "c-1" });
    expect(forCarol["id"]).not.toBe(forBob["id"]);
    // Each recipient gets the message meant for them, never the other conversation's.
    expect(await c.next("chat_message")).toEqual(forCarol);
    expect(await b.next("chat_message")).toEqual(forBob);
    await waitFor(async () => {
      expect(await history(engine.http[0], alice, tb)).toEqual([forBob].map(asHistoryMessage));
      expect(await history(engine.http[1], alice, tc)).toEqual([forCarol].map(asHistoryMessage));
    }, 10000);
    noSchemaViolations(toBob, toCarol, b, c);

    // After a crash and restart (the embedded engine restores its client_ids from the database),
    // a retry in each conversation still gets that conversation's original back.
    await engine.crashAndRestart();
    const retryBob = await connectReady(engine.nodes[0], chatPath(bob), ta);
    retryBob.send({ type: "chat_message", message: "for bob", client_id: "c-1" });
    expect(await retryBob.next("chat_message")).toEqual(forBob);
    const retryCarol = await connectReady(engine.nodes[1], chatPath(carol), ta);
    retryCarol.send({ type: "chat_message", message: "for carol", client_id: "c-1" });
    expect(await retryCarol.next("chat_message")).toEqual(forCarol);
    await waitFor(async () => expect(await history(engine.http[1], alice, tc)).toEqual([forCarol].map(asHistoryMessage)), 10000);
    expect(await history(engine.http[0], alice, tb)).toEqual([forBob].map(asHistoryMessage));
  });

  it("creates one message when the same client_ids are sent at once on two sockets of one user, one per entry point", async () => {
    const engine = shared();
    const [alice, bob] = [uniqueUser("alice"), uniqueUser("bob")];
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);
    const a1 = await connectReady(engine.nodes[0], chatPath(bob), ta);
    const a2 = await connectReady(engine.nodes[1], chatPath(bob), ta);
    const b = await connectReady(engine.nodes[0], chatPath(alice), tb);
    const n = 100;
    for (let k = 0; k < n; k++) {
      a1.send({ type: "chat_message", message: `m${k}`, client_id: `dup-${k}` });
      a2.send({ type: "chat_message", message: `m${k}`, client_id: `dup-${k}` });
    }
    // Each socket: every message live once, plus the original again for each of its own copies that lost.
    const copies = () => chatMessages(a1).length + chatMessages(a2).length;
    await waitFor(() => copies() >= 3 * n, 10000);
    await b.until((f) => f.filter((x) => x.type === "chat_message").length >= n, 10000, "every message at bob");
    const ids: string[] = [];
    for (let k = 0; k < n; k++) {
      const seen = new Set([...echoes(a1, `dup-${k}`), ...echoes(a2, `dup-${k}`), ...echoes(b, `dup-${k}`)].map((f) => String(f["id"])));
      expect(seen.size, `ids seen for dup-${k}`).toBe(1);
      expect(echoes(b, `dup-${k}`), `bob's copies of dup-${k}`).toHaveLength(1);
      ids.push([...seen][0]!);
    }
    // The history holds exactly one message per client_id, in the order bob saw them.
    await waitFor(async () => expect(await history(engine.http[1], alice, tb, 200)).toHaveLength(n), 10000);
    expect((await history(engine.http[1], alice, tb, 200)).map((m: { id: string }) => m.id).reverse()).toEqual(chatMessages(b).map((f) => f["id"]));
    expect(new Set(ids).size).toBe(n);
    expect(copies()).toBe(3 * n);
    for (const s of [a1, a2, b]) expect(s.ofType("error")).toEqual([]);
    noSchemaViolations(a1, a2, b);
  });
});
