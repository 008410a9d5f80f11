import { describe, expect, it } from "vitest";
import { connect, connectReady, engines, sharedEngine, tokenFor, uniqueUser, waitFor, type Frame } from "../helpers/index.js";
import {
  asHistoryMessage,
  asStoredMessage,
  chatMessages,
  chatPath,
  conversationWith,
  history,
  noSchemaViolations,
  NO_RATE_LIMIT,
  notificationsPath,
  say,
  withoutPresence,
} from "./support.js";

const N = 200;

describe.each(engines)("crash durability (%s engine)", (kind) => {
  const shared = sharedEngine(kind, NO_RATE_LIMIT);
  it(`keeps every accepted message, once and in order, and exact unread counts and reads, across a SIGKILL of every process (${N} messages)`, async () => {
    const engine = shared();
    const [alice, bob] = [uniqueUser("alice"), uniqueUser("bob")];
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);
    const a = await connectReady(engine.nodes[0], chatPath(bob), ta);
    const bChat = await connectReady(engine.nodes[1], chatPath(alice), tb);
    const bAll = await connectReady(engine.nodes[1], notificationsPath(), tb);

    // Before the crash: five messages, and bob reads them (the read is persisted: his count says 0).
    const pre: Frame[] = [];
    for (let i = 0; i < 5; i++) pre.push(await say(a, `pre-${i}`));
    await bAll.until((f) => f.some((x) => x.type === "new_message_notification" && x["unread_count"] === 5), 10000, "five unread");
    bChat.send({ type: "read_messages" });
    await bAll.until((f) => f.at(-1)?.type === "unread_count" && f.at(-1)?.["unread_count"] === 0, 10000, "the read applied");

    // N messages as fast as possible; every echo back means every one was accepted. Then, at once, SIGKILL.
    for (let i = 0; i < N; i++) a.send({ type: "chat_message", message: `flood-${i}`, client_id: `flood-${i}` });
    await a.until((f) => f.filter((x) => x.type === "chat_message").length >= pre.length + N, 15000, "every echo");
    await engine.crashAndRestart();
    const flood = chatMessages(a).slice(pre.length);
    expect(flood.map((f) => f["client_id"])).toEqual(Array.from({ length: N }, (_, i) => `flood-${i}`));
    expect(a.ofType("error")).toEqual([]);

    // After the restart: every message in the history exactly once, in the order the sockets saw them.
    const [http0, http1] = engine.http;
    // Bob read the five sent before the crash: the history says so.
    const expected = [...pre.map((m) => asHistoryMessage(m, { readBy: [bob] })), ...flood.map((m) => asHistoryMessage(m))].reverse();
    await waitFor(async () => expect(await history(http0, bob, ta, 200)).toHaveLength(expected.length), 15000, 200);
    expect(await history(http0, bob, ta, 200)).toEqual(expected);
    expect(await history(http1, alice, tb, 37)).toEqual(expected);
    // The read before the crash still holds: bob's unread count is exactly N, over HTTP and on connect.
    await waitFor(async () => expect((await conversationWith(http1, tb, alice))?.unread_count).toBe(N), 10000);
    expect(await conversationWith(http0, tb, alice)).toMatchObject({ unread_count: N, last_message: asStoredMessage(flood.at(-1)!) });
    for (const n of engine.nodes) {
      expect((await connectReady(n, notificationsPath(), tb)).frames[0]).toEqual({ type: "unread_count", unread_count: N });
      expect((await connectReady(n, notificationsPath(alice), tb)).frames[0]).toEqual({ type: "single_conversation_unread_count", unread_count: N });
      expect((await connectReady(n, notificationsPath(bob), ta)).frames[0]).toEqual({ type: "single_conversation_unread_count", unread_count: 0 });
    }

    // Bob catches up from the last message he saw before the crash: the N he missed, complete.
    const b2 = await connect(engine.nodes[0], chatPath(alice, String(pre.at(-1)!["id"])), tb);
    await b2.until((f) => f.some((x) => x.type === "catch_up_end"), 10000, "catch_up_end");
    const replay = withoutPresence(b2.frames);
    expect(replay.slice(1, -1)).toEqual(flood);
    expect(replay.at(-1)).toEqual({ type: "catch_up_end", recovered: true, count: N });

    // The restarted deployment goes on: a new message comes after all of them and counts N + 1; a read clears it.
    const bAll2 = await connectReady(engine.nodes[1], notificationsPath(), tb);
    expect(await bAll2.next()).toEqual({ type: "unread_count", unread_count: N });
    const a2 = await connectReady(engine.nodes[0], chatPath(bob), ta);
    const after = await say(a2, "after the crash");
    expect(await bAll2.next(undefined, 10000)).toEqual({ type: "new_message_notification", unread_count: N + 1 });
    await b2.until((f) => f.some((x) => x["id"] === after["id"]), 5000, "the new message live");
    expect((await history(http1, alice, tb, 1))[0]).toEqual(asHistoryMessage(after));
    b2.send({ type: "read_messages" });
    expect(await bAll2.next(undefined, 10000)).toEqual({ type: "unread_count", unread_count: 0 });
    noSchemaViolations(a, bChat, bAll, b2, bAll2, a2);
  });

  it("keeps a read across a crash and counts only the messages after it", async () => {
    const engine = shared();
    const [alice, bob] = [uniqueUser("alice"), uniqueUser("bob")];
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);
    const a = await connectReady(engine.nodes[0], chatPath(bob), ta);
    const bChat = await connectReady(engine.nodes[1], chatPath(alice), tb);
    const bFromA = await connectReady(engine.nodes[0], notificationsPath(alice), tb);
    for (let i = 0; i < 20; i++) a.send({ type: "chat_message", message: `r${i}`, client_id: `r${i}` });
    await bChat.until((f) => f.filter((x) => x.type === "chat_message").length === 20, 10000, "the messages at bob");
    bChat.send({ type: "read_messages" });
    await bFromA.until((f) => f.at(-1)?.type === "single_conversation_unread_count" && f.at(-1)?.["unread_count"] === 0 && f.length > 1, 10000, "the read");
    // Three more after the read, accepted, then the crash.
    for (let i = 0; i < 3; i++) await say(a, `later-${i}`);
    await engine.crashAndRestart();
    await waitFor(async () => expect(await history(engine.http[1], alice, tb)).toHaveLength(23), 15000, 200);
    await waitFor(async () => expect((await conversationWith(engine.http[0], tb, alice))?.unread_count).toBe(3), 10000);
    expect((await connectReady(engine.nodes[1], notificationsPath(alice), tb)).frames[0]).toEqual({ type: "single_conversation_unread_count", unread_count: 3 });
    expect((await connectReady(engine.nodes[0], notificationsPath(), tb)).frames[0]).toEqual({ type: "unread_count", unread_count: 3 });
  });

  it("still answers a retry of a client_id accepted before the crash with the original message", async () => {
    const engine = shared();
    const [alice, bob] = [uniqueUser("alice"), uniqueUser("bob")];
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);
    const a = await connectReady(engine.nodes[0], chatPath(bob), ta);
    const original = await say(a, "sent before the crash", { client_id: "c-crash" });
    // The client never saw that echo (say), the server died; it reconnects and sends again.
    await engine.crashAndRestart();
    const a2 = await connectReady(engine.nodes[1], chatPath(bob), ta);
    a2.send({ type: "chat_message", message: "sent before the crash", client_id: "c-crash" });
    expect(await a2.next("chat_message", 10000)).toEqual(original);
    const next = await say(a2, "a new one");
    await waitFor(async () => expect(await history(engine.http[0], alice, tb)).toHaveLength(2), 15000, 200);
    expect(await history(engine.http[0], alice, tb)).toEqual([next, original].map(asHistoryMessage));
    await waitFor(async () => expect((await conversationWith(engine.http[1], tb, alice))?.unread_count).toBe(2), 10000);
  });
});
