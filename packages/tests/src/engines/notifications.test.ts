import { describe, expect, it } from "vitest";
import { connectReady, engines, sharedEngine, tokenFor, uniqueUser, waitFor, type TestClient } from "../helpers/index.js";
import { chatPath, conversationTriple, conversationWith, noSchemaViolations, notificationsPath, say, take } from "./support.js";

const next = (c: TestClient) => c.next(undefined, 10000);

describe.each(engines)("notifications and unread counts (%s engine)", (kind) => {
  const shared = sharedEngine(kind);
  it("notifies every notification socket of the recipient on both entry points, in order, with exact counts, and nobody else", async () => {
    const engine = shared();
    const [n0, n1] = engine.nodes;
    const [u, v, w] = [uniqueUser("u"), uniqueUser("v"), uniqueUser("w")];
    const [tu, tv, tw] = await Promise.all([tokenFor(u), tokenFor(v), tokenFor(w)]);

    const uAll = [await connectReady(n0, notificationsPath(), tu), await connectReady(n1, "/ws/notifications", tu)];
    const uFromV = [await connectReady(n0, notificationsPath(v), tu), await connectReady(n1, `/ws/notifications/${v}`, tu)];
    const uFromW = await connectReady(n1, notificationsPath(w), tu);
    const vAll = await connectReady(n0, notificationsPath(), tv);
    const vFromU = await connectReady(n1, notificationsPath(u), tv);
    const vChat = await connectReady(n1, chatPath(u), tv);
    const wChat = await connectReady(n0, chatPath(u), tw);
    const uChat = await connectReady(n0, chatPath(v), tu);

    for (const c of [...uAll, vAll]) expect(await next(c)).toEqual({ type: "unread_count", unread_count: 0 });
    for (const c of [...uFromV, uFromW, vFromU]) expect(await next(c)).toEqual({ type: "single_conversation_unread_count", unread_count: 0 });

    // One message at a time, so each notification carries the total right after that message.
    const v1 = await say(vChat, "v1");
    for (const c of uAll) expect(await next(c)).toEqual({ type: "new_message_notification", unread_count: 1 });
    for (const c of uFromV) expect(await take(c, 3)).toEqual(conversationTriple(1, v1));
    const w1 = await say(wChat, "w1");
    for (const c of uAll) expect(await next(c)).toEqual({ type: "new_message_notification", unread_count: 2 });
    expect(await take(uFromW, 3)).toEqual(conversationTriple(1, w1));
    // A media-only message: last_message is "".
    const v2 = await say(vChat, "", { multimedia_url: "https://cdn.example/v2.png", client_id: "v2" });
    for (const c of uAll) expect(await next(c)).toEqual({ type: "new_message_notification", unread_count: 3 });
    for (const c of uFromV) expect(await take(c, 3)).toEqual(conversationTriple(2, v2));
    expect(conversationTriple(2, v2)[2]).toMatchObject({ last_message: "" });
    // W's next message: had U's socket for W been sent anything for V's messages, it would come first.
    const w2 = await say(wChat, "w2");
    for (const c of uAll) expect(await next(c)).toEqual({ type: "new_message_notification", unread_count: 4 });
    expect(await take(uFromW, 3)).toEqual(conversationTriple(2, w2));
    // Likewise for U's sockets for V and W's messages.
    const v3 = await say(vChat, "v3");
    for (const c of uAll) expect(await next(c)).toEqual({ type: "new_message_notification", unread_count: 5 });
    for (const c of uFromV) expect(await take(c, 3)).toEqual(conversationTriple(3, v3));

    // The sender heard nothing of its own messages: the first thing after its greeting is U's reply.
    const u1 = await say(uChat, "u1");
    expect(await next(vAll)).toEqual({ type: "new_message_notification", unread_count: 1 });
    expect(await take(vFromU, 3)).toEqual(conversationTriple(1, u1));
    noSchemaViolations(...uAll, ...uFromV, uFromW, vAll, vFromU);
  });

  it("recomputes the counts after read_messages, keeps other conversations in the total, and greets new sockets with exact counts", async () => {
    const engine = shared();
    const [n0, n1] = engine.nodes;
    const [u, v, w, x] = [uniqueUser("u"), uniqueUser("v"), uniqueUser("w"), uniqueUser("x")];
    const [tu, tv, tw] = await Promise.all([tokenFor(u), tokenFor(v), tokenFor(w)]);

    const uAll = [await connectReady(n0, notificationsPath(), tu), await connectReady(n1, notificationsPath(), tu)];
    const uFromV = [await connectReady(n0, notificationsPath(v), tu), await connectReady(n1, notificationsPath(v), tu)];
    const uFromW = await connectReady(n1, notificationsPath(w), tu);
    const vChat = await connectReady(n0, chatPath(u), tv);
    const wChat = await connectReady(n1, chatPath(u), tw);
    const uChatV = await connectReady(n1, chatPath(v), tu);
    const uChatW = await connectReady(n0, chatPath(w), tu);
    for (const c of [...uAll, ...uFromV, uFromW]) await next(c);

    for (let i = 1; i <= 3; i++) {
      await say(vChat, `v${i}`);
      for (const c of uAll) expect(await next(c)).toEqual({ type: "new_message_notification", unread_count: i });
      for (const c of uFromV) await take(c, 3);
    }
    for (let i = 1; i <= 2; i++) {
      await say(wChat, `w${i}`);
      for (const c of uAll) expect(await next(c)).toEqual({ type: "new_message_notification", unread_count: 3 + i });
      await take(uFromW, 3);
    }

    // Counts on connect are exact, on both entry points, for every socket kind (and 0 for a stranger and for the senders).
    for (const n of [n0, n1]) {
      expect((await connectReady(n, notificationsPath(), tu)).frames[0]).toEqual({ type: "unread_count", unread_count: 5 });
      expect((await connectReady(n, notificationsPath(v), tu)).frames[0]).toEqual({ type: "single_conversation_unread_count", unread_count: 3 });
      expect((await connectReady(n, notificationsPath(w), tu)).frames[0]).toEqual({ type: "single_conversation_unread_count", unread_count: 2 });
      expect((await connectReady(n, notificationsPath(x), tu)).frames[0]).toEqual({ type: "single_conversation_unread_count", unread_count: 0 });
      expect((await connectReady(n, notificationsPath(), tv)).frames[0]).toEqual({ type: "unread_count", unread_count: 0 });
      expect((await connectReady(n, notificationsPath(u), tw)).frames[0]).toEqual({ type: "single_conversation_unread_count", unread_count: 0 });
    }

    // U reads V's conversation: the total keeps W's two; only U's sockets for V get their recount.
    uChatV.send({ type: "read_messages" });
    for (const c of uAll) expect(await next(c)).toEqual({ type: "unread_count", unread_count: 2 });
    for (const c of uFromV) expect(await next(c)).toEqual({ type: "single_conversation_unread_count", unread_count: 0 });
    uChatW.send({ type: "read_messages" });
    expect(await next(uFromW)).toEqual({ type: "single_conversation_unread_count", unread_count: 0 });
    for (const c of uAll) expect(await next(c)).toEqual({ type: "unread_count", unread_count: 0 });
    // Reading again with nothing new: still 0.
    uChatW.send({ type: "read_messages" });
    expect(await next(uFromW)).toEqual({ type: "single_conversation_unread_count", unread_count: 0 });
    for (const c of uAll) expect(await next(c)).toEqual({ type: "unread_count", unread_count: 0 });

    // New messages after the read count from 0; U's sockets for V heard nothing of the reads of W.
    const v4 = await say(vChat, "v4");
    for (const c of uAll) expect(await next(c)).toEqual({ type: "new_message_notification", unread_count: 1 });
    for (const c of uFromV) expect(await take(c, 3)).toEqual(conversationTriple(1, v4));

    // The HTTP badge and fresh sockets agree.
    await waitFor(async () => expect((await conversationWith(engine.http[1], tu, v))?.unread_count).toBe(1), 10000);
    expect((await conversationWith(engine.http[0], tu, w))?.unread_count).toBe(0);
    for (const n of [n0, n1]) {
      expect((await connectReady(n, notificationsPath(), tu)).frames[0]).toEqual({ type: "unread_count", unread_count: 1 });
      expect((await connectReady(n, notificationsPath(v), tu)).frames[0]).toEqual({ type: "single_conversation_unread_count", unread_count: 1 });
      expect((await connectReady(n, notificationsPath(w), tu)).frames[0]).toEqual({ type: "single_conversation_unread_count", unread_count: 0 });
    }
    noSchemaViolations(...uAll, ...uFromV, uFromW);
  });
});
