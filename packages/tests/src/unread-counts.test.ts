import { describe, expect, it } from "vitest";
import { redisNames } from "@chat/bus";
import {
  connectReady,
  conversationStream,
  conversationsBacklog,
  freshPrefix,
  logLength,
  messagesBetween,
  sharedPair,
  startGateway,
  startWorker,
  testRedis,
  testSql,
  tokenFor,
  uniqueUser,
  userWhose,
  waitForLeaseShares,
  unreadOf,
  waitFor,
  type Frame,
  type TestClient,
} from "./helpers/index.js";

/** Takes the next `n` frames of a socket, whatever their type (so nothing may slip in between). */
async function take(c: TestClient, n: number, timeoutMs = 10000): Promise<Frame[]> {
  const out: Frame[] = [];
  for (let i = 0; i < n; i++) out.push(await c.next(undefined, timeoutMs));
  return out;
}

/** The three frames a `/ws/notifications/{from}/` socket must get, in this order, for one message. */
function conversationTriple(count: number, echo: Frame): Frame[] {
  return [
    { type: "single_conversation_new_message_notification" },
    { type: "single_conversation_unread_count", unread_count: count },
    { type: "single_conversation_last_message", last_message: echo["message"], last_datetime: echo["date_added"] },
  ];
}

/** Sends one chat message and returns the sender's own echo (the proof it was accepted). */
async function say(chat: TestClient, text: string): Promise<Frame> {
  chat.send({ type: "chat_message", message: text, client_id: text });
  for (;;) {
    const f = await chat.next("chat_message", 10000);
    if (f["client_id"] === text) return f;
  }
}

async function totalUnreadInDb(user: string): Promise<number> {
  const sql = testSql();
  const [row] = await sql<{ n: number | null }[]>`SELECT sum(unread_count)::int AS n FROM conversation_members WHERE username = ${user}`;
  return row?.n ?? 0;
}

function noViolations(...clients: TestClient[]): void {
  for (const c of clients) expect(c.schemaViolations).toEqual([]);
}


/** Two gateways and a worker for the tests that need nothing fresh of them: each has users of its own. */
const pair = sharedPair("unread");

describe("unread counts", () => {
  it("greets /ws/notifications/ with unread_count and /ws/notifications/{other}/ with single_conversation_unread_count", async () => {
    const [g1, g2] = await pair();
    const [u, v, w, x] = [uniqueUser("u"), uniqueUser("v"), uniqueUser("w"), uniqueUser("x")];
    const [tu, tv, tw] = await Promise.all([tokenFor(u), tokenFor(v), tokenFor(w)]);

    // Before anything happened, every count is 0.
    const fresh = await connectReady(g1.url, "/ws/notifications/", tu);
    expect(fresh.frames[0]).toEqual({ type: "unread_count", unread_count: 0 });

    const vChat = await connectReady(g1.url, `/ws/${u}/`, tv);
    const wChat = await connectReady(g2.url, `/ws/${u}/`, tw);
    await say(vChat, "v1");
    await say(vChat, "v2");
    await say(wChat, "w1");
    await waitFor(async () => (await unreadOf(u, v)) === 2 && (await unreadOf(u, w)) === 1);

    const all1 = await connectReady(g1.url, "/ws/notifications/", tu);
    const all2 = await connectReady(g2.url, "/ws/notifications", tu);
    const fromV = await connectReady(g2.url, `/ws/notifications/${v}/`, tu);
    const fromW = await connectReady(g1.url, `/ws/notifications/${w}`, tu);
    const fromX = await connectReady(g1.url, `/ws/notifications/${x}/`, tu);
    const senderAll = await connectReady(g2.url, "/ws/notifications/", tv);
    const senderConv = await connectReady(g1.url, `/ws/notifications/${u}/`, tv);

    expect(all1.frames[0]).toEqual({ type: "unread_count", unread_count: 3 });
    expect(all2.frames[0]).toEqual({ type: "unread_count", unread_count: 3 });
    expect(fromV.frames[0]).toEqual({ type: "single_conversation_unread_count", unread_count: 2 });
    expect(fromW.frames[0]).toEqual({ type: "single_conversation_unread_count", unread_count: 1 });
    expect(fromX.frames[0]).toEqual({ type: "single_conversation_unread_count", unread_count: 0 });
    // The sender has nothing unread: its own messages never count for it.
    expect(senderAll.frames[0]).toEqual({ type: "unread_count", unread_count: 0 });
    expect(senderConv.frames[0]).toEqual({ type: "single_conversation_unread_count", unread_count: 0 });
    noViolations(fresh, all1, all2, fromV, fromW, fromX, senderAll, senderConv);
  });

  it("notifies every notification socket of the recipient, on both nodes, in order, and nobody else", async () => {
    const [g1, g2] = await pair();
    const [u, v, w] = [uniqueUser("u"), uniqueUser("v"), uniqueUser("w")];
    const [tu, tv, tw] = await Promise.all([tokenFor(u), tokenFor(v), tokenFor(w)]);

    const uAll = [await connectReady(g1.url, "/ws/notifications/", tu), await connectReady(g2.url, "/ws/notifications/", tu)];
    const uFromV = [await connectReady(g1.url, `/ws/notifications/${v}/`, tu), await connectReady(g2.url, `/ws/notifications/${v}/`, tu)];
    const uFromW = await connectReady(g2.url, `/ws/notifications/${w}/`, tu);
    const vAll = await connectReady(g1.url, "/ws/notifications/", tv);
    const vFromU = await connectReady(g2.url, `/ws/notifications/${u}/`, tv);
    const vChat = await connectReady(g2.url, `/ws/${u}/`, tv);
    const wChat = await connectReady(g1.url, `/ws/${u}/`, tw);
    const uChat = await connectReady(g1.url, `/ws/${v}/`, tu);

    for (const c of uAll) expect(await c.next(undefined, 10000)).toEqual({ type: "unread_count", unread_count: 0 });
    for (const c of [...uFromV, uFromW]) expect(await c.next(undefined, 10000)).toEqual({ type: "single_conversation_unread_count", unread_count: 0 });
    expect(await vAll.next(undefined, 10000)).toEqual({ type: "unread_count", unread_count: 0 });
    expect(await vFromU.next(undefined, 10000)).toEqual({ type: "single_conversation_unread_count", unread_count: 0 });

    // One message at a time, so each notification carries the total right after that message.
    const v1 = await say(vChat, "v1");
    for (const c of uAll) expect(await c.next(undefined, 10000)).toEqual({ type: "new_message_notification", unread_count: 1 });
    for (const c of uFromV) expect(await take(c, 3)).toEqual(conversationTriple(1, v1));

    const w1 = await say(wChat, "w1");
    for (const c of uAll) expect(await c.next(undefined, 10000)).toEqual({ type: "new_message_notification", unread_count: 2 });
    expect(await take(uFromW, 3)).toEqual(conversationTriple(1, w1));

    const v2 = await say(vChat, "v2");
    for (const c of uAll) expect(await c.next(undefined, 10000)).toEqual({ type: "new_message_notification", unread_count: 3 });
    for (const c of uFromV) expect(await take(c, 3)).toEqual(conversationTriple(2, v2));

    // W's next message is published after v1 and v2 on the same channel: had U's socket for W been
    // sent anything for them, it would come before this.
    const w2 = await say(wChat, "w2");
    for (const c of uAll) expect(await c.next(undefined, 10000)).toEqual({ type: "new_message_notification", unread_count: 4 });
    expect(await take(uFromW, 3)).toEqual(conversationTriple(2, w2));
    // Likewise V's next message shows U's sockets for V got nothing for w1 and w2.
    const v3 = await say(vChat, "v3");
    for (const c of uAll) expect(await c.next(undefined, 10000)).toEqual({ type: "new_message_notification", unread_count: 5 });
    for (const c of uFromV) expect(await take(c, 3)).toEqual(conversationTriple(3, v3));

    // The sender: the first thing after its greeting is the notification of U's reply, so nothing
    // came for its own three messages.
    const u1 = await say(uChat, "u1");
    expect(await vAll.next(undefined, 10000)).toEqual({ type: "new_message_notification", unread_count: 1 });
    expect(await take(vFromU, 3)).toEqual(conversationTriple(1, u1));

    expect(await unreadOf(u, v)).toBe(3);
    expect(await unreadOf(u, w)).toBe(2);
    expect(await unreadOf(v, u)).toBe(1);
    noViolations(...uAll, ...uFromV, uFromW, vAll, vFromU);
  });

  it("recomputes the counts after read_messages, keeping other conversations in the total, and reconnects match Postgres", async () => {
    const [g1, g2] = await pair();
    const [u, v, w] = [uniqueUser("u"), uniqueUser("v"), uniqueUser("w")];
    const [tu, tv, tw] = await Promise.all([tokenFor(u), tokenFor(v), tokenFor(w)]);

    const uAll = [await connectReady(g1.url, "/ws/notifications/", tu), await connectReady(g2.url, "/ws/notifications/", tu)];
    const uFromV = [await connectReady(g1.url, `/ws/notifications/${v}/`, tu), await connectReady(g2.url, `/ws/notifications/${v}/`, tu)];
    const uFromW = await connectReady(g2.url, `/ws/notifications/${w}/`, tu);
    const vChat = await connectReady(g1.url, `/ws/${u}/`, tv);
    const wChat = await connectReady(g2.url, `/ws/${u}/`, tw);
    const uChatV = await connectReady(g2.url, `/ws/${v}/`, tu);
    const uChatW = await connectReady(g1.url, `/ws/${w}/`, tu);
    for (const c of [...uAll, ...uFromV, uFromW]) await c.next(undefined, 10000);

    for (let i = 1; i <= 3; i++) {
      await say(vChat, `v${i}`);
      for (const c of uAll) expect(await c.next(undefined, 10000)).toEqual({ type: "new_message_notification", unread_count: i });
      for (const c of uFromV) await take(c, 3);
    }
    for (let i = 1; i <= 2; i++) {
      await say(wChat, `w${i}`);
      for (const c of uAll) expect(await c.next(undefined, 10000)).toEqual({ type: "new_message_notification", unread_count: 3 + i });
      await take(uFromW, 3);
    }

    uChatV.send({ type: "read_messages" });
    for (const c of uAll) expect(await c.next(undefined, 10000)).toEqual({ type: "unread_count", unread_count: 2 });
    for (const c of uFromV) expect(await c.next(undefined, 10000)).toEqual({ type: "single_conversation_unread_count", unread_count: 0 });
    expect(await unreadOf(u, v)).toBe(0);
    expect(await unreadOf(u, w)).toBe(2);

    // Reading W's conversation next: U's socket for W gets only its own recount (nothing for the read of V).
    uChatW.send({ type: "read_messages" });
    expect(await uFromW.next(undefined, 10000)).toEqual({ type: "single_conversation_unread_count", unread_count: 0 });
    for (const c of uAll) expect(await c.next(undefined, 10000)).toEqual({ type: "unread_count", unread_count: 0 });
    // Nor did U's sockets for V get anything for the read of W: the next thing is V's new message.
    const v4 = await say(vChat, "v4");
    for (const c of uAll) expect(await c.next(undefined, 10000)).toEqual({ type: "new_message_notification", unread_count: 1 });
    for (const c of uFromV) expect(await take(c, 3)).toEqual(conversationTriple(1, v4));
    const w3 = await say(wChat, "w3");
    for (const c of uAll) expect(await c.next(undefined, 10000)).toEqual({ type: "new_message_notification", unread_count: 2 });
    expect(await take(uFromW, 3)).toEqual(conversationTriple(1, w3));
    noViolations(...uAll, ...uFromV, uFromW);

    // Reconnect everywhere: the greetings are what Postgres holds.
    await Promise.all([...uAll, ...uFromV, uFromW].map((c) => c.close()));
    const [dbV, dbW] = [await unreadOf(u, v), await unreadOf(u, w)];
    expect([dbV, dbW]).toEqual([1, 1]);
    for (const g of [g1, g2]) {
      expect((await connectReady(g.url, "/ws/notifications/", tu)).frames[0]).toEqual({ type: "unread_count", unread_count: dbV + dbW });
      expect((await connectReady(g.url, `/ws/notifications/${v}/`, tu)).frames[0]).toEqual({ type: "single_conversation_unread_count", unread_count: dbV });
      expect((await connectReady(g.url, `/ws/notifications/${w}/`, tu)).frames[0]).toEqual({ type: "single_conversation_unread_count", unread_count: dbW });
    }
  });

  it("with no worker running, a read sent after messages reads them once a worker persists both", async () => {
    const prefix = freshPrefix("readfirst");
    const [g1, g2] = await Promise.all([startGateway(prefix), startGateway(prefix)]);
    const names = redisNames(prefix);
    const redis = testRedis();
    const [u, v] = [uniqueUser("u"), uniqueUser("v")];
    const [tu, tv] = await Promise.all([tokenFor(u), tokenFor(v)]);
    const uAll = await connectReady(g1.url, "/ws/notifications/", tu);
    const uFromV = await connectReady(g2.url, `/ws/notifications/${v}/`, tu);
    const vChat = await connectReady(g1.url, `/ws/${u}/`, tv);
    const uChat = await connectReady(g2.url, `/ws/${v}/`, tu);

    for (let i = 0; i < 4; i++) await say(vChat, `before-read-${i}`);
    await uChat.until((f) => f.filter((x) => x.type === "chat_message").length === 4, 5000, "U sees the messages");
    uChat.send({ type: "read_messages" });
    await waitFor(async () => (await redis.xlen(conversationStream(names, u, v))) === 5);
    expect(await messagesBetween(u, v)).toHaveLength(0);

    await startWorker(prefix);
    await waitFor(async () => (await messagesBetween(u, v)).length === 4);
    expect(await unreadOf(u, v)).toBe(0);
    // The read is the last stream entry, so its recount is the last thing each socket hears, and it says 0.
    await uAll.until((f) => f.slice(1).some((x) => x.type === "unread_count"), 8000, "unread_count after the read");
    expect(uAll.frames.map((f) => f.type)).toEqual(["unread_count", ...Array(4).fill("new_message_notification"), "unread_count"]);
    expect(uAll.frames.at(-1)).toEqual({ type: "unread_count", unread_count: 0 });
    await uFromV.until((f) => f.length === 1 + 4 * 3 + 1, 8000, "four triples and the recount");
    expect(uFromV.frames.at(-1)).toEqual({ type: "single_conversation_unread_count", unread_count: 0 });
    expect((await connectReady(g2.url, "/ws/notifications/", tu)).frames[0]).toEqual({ type: "unread_count", unread_count: 0 });
    expect((await connectReady(g1.url, `/ws/notifications/${v}/`, tu)).frames[0]).toEqual({ type: "single_conversation_unread_count", unread_count: 0 });
    noViolations(uAll, uFromV);
  });

  it("persists a message accepted before any worker ever ran once one starts (the group starts at the beginning)", async () => {
    const prefix = freshPrefix("early");
    const g = await startGateway(prefix);
    const names = redisNames(prefix);
    const redis = testRedis();
    const [u, v] = [uniqueUser("u"), uniqueUser("v")];
    const [tu, tv] = await Promise.all([tokenFor(u), tokenFor(v)]);
    const uAll = await connectReady(g.url, "/ws/notifications/", tu);
    const vChat = await connectReady(g.url, `/ws/${u}/`, tv);
    const early = await say(vChat, "accepted before any worker");
    const stream = conversationStream(names, u, v);
    await waitFor(async () => (await redis.xlen(stream)) === 1);
    // No worker ever ran on this prefix: the conversation's partition stream has no consumer group yet.
    expect(await redis.xinfo("GROUPS", stream)).toEqual([]);

    await startWorker(prefix);
    const rows = await waitFor(async () => {
      const r = await messagesBetween(u, v);
      expect(r).toHaveLength(1);
      return r;
    });
    expect(rows[0]).toMatchObject({ id: early["id"], from_user: v, to_user: u, content: "accepted before any worker" });
    expect(await unreadOf(u, v)).toBe(1);
    expect(await uAll.next("new_message_notification", 8000)).toEqual({ type: "new_message_notification", unread_count: 1 });
  });

  it("does not count messages a slow worker persists after another worker already applied a later read", async () => {
    const prefix = freshPrefix("slowpersist");
    const [g1, g2] = await Promise.all([startGateway(prefix), startGateway(prefix)]);
    const names = redisNames(prefix);
    const redis = testRedis();
    const [u, v] = [uniqueUser("u"), uniqueUser("v")];
    const [tu, tv] = await Promise.all([tokenFor(u), tokenFor(v)]);
    const uAll = await connectReady(g1.url, "/ws/notifications/", tu);
    const vChat = await connectReady(g2.url, `/ws/${u}/`, tv);
    const uChat = await connectReady(g1.url, `/ws/${v}/`, tu);
    expect(await uAll.next(undefined, 10000)).toEqual({ type: "unread_count", unread_count: 0 });

    for (let i = 0; i < 5; i++) await say(vChat, `early-${i}`);
    await uChat.until((f) => f.filter((x) => x.type === "chat_message").length === 5, 5000, "U sees the messages");
    uChat.send({ type: "read_messages" });
    const stream = conversationStream(names, u, v);
    await waitFor(async () => (await redis.xlen(stream)) === 6);
    await say(vChat, "late-0");
    await say(vChat, "late-1");

    // A consumer of the group that is alive but slow takes the five early messages and keeps them;
    // the first worker never claims them (claim idle 60 s), so it applies the read first.
    await redis.xgroup("CREATE", stream, names.group, "0");
    const held = (await redis.xreadgroup("GROUP", names.group, "slow", "COUNT", 5, "STREAMS", stream, ">")) as [string, [string, string[]][]][];
    const heldIds = held[0]![1].map(([id]) => id);
    expect(heldIds).toHaveLength(5);
    const first = await startWorker(prefix, { CHAT_WORKER_CLAIM_IDLE_MS: "60000" });
    // The read is applied while the early messages are not persisted yet: the first notification U
    // hears is the read's recount.
    expect(await uAll.next(undefined, 8000)).toMatchObject({ type: "unread_count" });
    await waitFor(async () => (await messagesBetween(u, v)).length === 2, 10000);
    expect(await messagesBetween(u, v)).toHaveLength(2);
    await first.stop();
    // A worker that claims after 1 s takes the early messages over from the slow consumer: they
    // are before the read in the stream, so they are persisted as read.
    await startWorker(prefix);
    await waitFor(async () => (await messagesBetween(u, v)).length === 7, 10000);
    expect(await unreadOf(u, v)).toBe(2);
    expect((await connectReady(g2.url, "/ws/notifications/", tu)).frames[0]).toEqual({ type: "unread_count", unread_count: 2 });
  });

  it("keeps each count exact when two workers start together on a stream of messages interleaved with reads", async () => {
    const prefix = freshPrefix("tworeads");
    const [g1, g2] = await Promise.all([startGateway(prefix), startGateway(prefix)]);
    const names = redisNames(prefix);
    const redis = testRedis();
    // The workers share the partitions (the helper's 3 s leases: the second takes its share within a
    // heartbeat or two, and keeps it on a loaded machine); the pairs' conversations alternate between the two workers' partitions, so both write.
    // No trimming during the test: readAll counts the log's entries.
    const workerEnv = { CHAT_WORKER_BATCH_SIZE: "2", CHAT_WORKER_TRIM_INTERVAL_MS: "600000", LOG_LEVEL: "debug" };
    const workers = await Promise.all([startWorker(prefix, workerEnv), startWorker(prefix, workerEnv)]);
    const owners = await waitForLeaseShares(redis, names, 2);
    const holders = [...new Set(owners)];
    const pairs = await Promise.all(
      [0, 1, 2, 3].map(async (i) => {
        const u = uniqueUser(`u${i}`);
        const v = userWhose(names, `v${i}`, u, (p) => owners[p] === holders[i % 2]);
        const [tu, tv] = await Promise.all([tokenFor(u), tokenFor(v)]);
        const gv = i % 2 === 0 ? g1 : g2;
        const gu = i % 2 === 0 ? g2 : g1;
        return { u, v, tu, vChat: await connectReady(gv.url, `/ws/${u}/`, tv), uChat: await connectReady(gu.url, `/ws/${v}/`, tu) };
      }),
    );
    // Per pair, in the stream: 6 messages, a read, 4 messages, (pair 0 and 2:) a second read, 3 messages.
    let entries = 0;
    let perPair = 0;
    const burst = async (n: number, label: string) => {
      for (let k = 0; k < n; k++) for (const p of pairs) await say(p.vChat, `${label}-${k}`);
      entries += n * pairs.length;
      perPair += n;
    };
    const readAll = async (which: typeof pairs) => {
      for (const p of which) {
        await p.uChat.until((f) => f.filter((x) => x.type === "chat_message").length === perPair, 5000, "U sees the messages");
        p.uChat.send({ type: "read_messages" });
      }
      entries += which.length;
      await waitFor(async () => (await logLength(redis, names)) === entries);
    };
    await burst(6, "a");
    await readAll(pairs);
    await burst(4, "b");
    await readAll([pairs[0]!, pairs[2]!]);
    await burst(3, "c");
    const expected = [3, 7, 3, 7];

    await waitFor(async () => {
      for (const p of pairs) expect(await messagesBetween(p.u, p.v)).toHaveLength(13);
      expect((await conversationsBacklog(redis, names, pairs.map((p) => [p.u, p.v] as const))).pending).toBe(0);
      return true;
    }, 15000);
    expect(await Promise.all(pairs.map((p) => unreadOf(p.u, p.v)))).toEqual(expected);
    for (const [i, p] of pairs.entries()) {
      const g = i % 2 === 0 ? g1 : g2;
      expect((await connectReady(g.url, "/ws/notifications/", p.tu)).frames[0]).toEqual({ type: "unread_count", unread_count: expected[i] });
      expect((await connectReady(g.url, `/ws/notifications/${p.v}/`, p.tu)).frames[0]).toEqual({ type: "single_conversation_unread_count", unread_count: expected[i] });
    }
    // Both workers took part (otherwise this would be the one-worker case again).
    for (const w of workers) expect(w.logs.filter((l) => l["msg"] === "batch persisted").length).toBeGreaterThan(0);
  });

  it("with two workers, the totals announced for concurrent messages in different conversations reach the persisted total", async () => {
    const prefix = freshPrefix("twototal");
    const [g1, g2] = await Promise.all([startGateway(prefix), startGateway(prefix)]);
    await Promise.all([startWorker(prefix, { CHAT_WORKER_BATCH_SIZE: "1" }), startWorker(prefix, { CHAT_WORKER_BATCH_SIZE: "1" })]);
    const u = uniqueUser("u");
    const [v, w] = [uniqueUser("v"), uniqueUser("w")];
    const tu = await tokenFor(u);
    const uAll = await connectReady(g1.url, "/ws/notifications/", tu);
    const uFromV = await connectReady(g2.url, `/ws/notifications/${v}/`, tu);
    const uFromW = await connectReady(g1.url, `/ws/notifications/${w}/`, tu);
    const vChat = await connectReady(g1.url, `/ws/${u}/`, await tokenFor(v));
    const wChat = await connectReady(g2.url, `/ws/${u}/`, await tokenFor(w));
    const wrong: string[] = [];
    const rounds = 40;
    for (let r = 1; r <= rounds; r++) {
      // V and W write to U at the same moment: the two workers persist them concurrently.
      vChat.send({ type: "chat_message", message: `v${r}` });
      wChat.send({ type: "chat_message", message: `w${r}` });
      await uAll.until((f) => f.filter((x) => x.type === "new_message_notification").length === 2 * r, 8000, `round ${r} notifications`);
      await waitFor(async () => (await totalUnreadInDb(u)) === 2 * r);
      const announced = uAll.ofType("new_message_notification").slice(-2).map((f) => Number(f["unread_count"]));
      // Whichever commit came last saw the other: one of the two must announce the new total.
      if (Math.max(...announced) !== 2 * r) wrong.push(`round ${r}: persisted total ${2 * r}, announced ${announced.join(" and ")}`);
    }
    expect(wrong).toEqual([]);
    // The per-conversation counts are exact each time.
    for (const c of [uFromV, uFromW]) {
      await c.until((f) => f.filter((x) => x.type === "single_conversation_unread_count").length === rounds + 1, 8000, "one count per message");
      expect(c.ofType("single_conversation_unread_count").map((f) => f["unread_count"])).toEqual(Array.from({ length: rounds + 1 }, (_, i) => i));
    }
    expect((await connectReady(g2.url, "/ws/notifications/", tu)).frames[0]).toEqual({ type: "unread_count", unread_count: 2 * rounds });
  });
});
