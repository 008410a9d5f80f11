import { randomUUID } from "node:crypto";
import { redisNames, streamIdOf } from "@chat/bus";
import { Redis } from "ioredis";
import { v7 as uuidv7 } from "uuid";
import { describe, expect, it, onTestFinished } from "vitest";
import {
  connect,
  connectReady,
  conversationStream,
  freePort,
  freshPrefix,
  messagesBetween,
  refusedUpgrade,
  startGateway,
  startPrivateRedis,
  startWorker,
  testRedis,
  testSql,
  tokenFor,
  uniqueUser,
  waitFor,
  type Frame,
  type TestClient,
} from "./helpers/index.js";

const PRESENCE = new Set(["user_join", "user_leave"]);

/** A socket's frames without presence changes (which may interleave anywhere after the greeting). */
function nonPresence(c: TestClient): Frame[] {
  return c.frames.filter((f) => !PRESENCE.has(f.type));
}

function chatIds(frames: Frame[]): string[] {
  return frames.filter((f) => f.type === "chat_message").map((f) => String(f["id"]));
}

/** Sends a message and resolves to the sender's own echo. */
async function say(chat: TestClient, text: string): Promise<Frame> {
  chat.send({ type: "chat_message", message: text, client_id: text });
  for (;;) {
    const f = await chat.next(undefined, 10000);
    if (f.type === "error") throw new Error(`refused: ${JSON.stringify(f)}`);
    if (f.type === "chat_message" && f["client_id"] === text) return f;
  }
}

/** The replay part of a socket opened with ?since=: its frames up to and including catch_up_end. */
async function replayOf(c: TestClient, timeoutMs = 10000): Promise<{ replayed: Frame[]; end: Frame }> {
  await c.until((fs) => fs.some((f) => f.type === "catch_up_end"), timeoutMs, "catch_up_end").catch((err: Error) => {
    throw new Error(`${err.message}; socket close code: ${c.closeCode ?? "still open"}`);
  });
  const frames = nonPresence(c);
  const endAt = frames.findIndex((f) => f.type === "catch_up_end");
  expect(frames[0]?.type, "first frame").toBe("online_user_list");
  const replayed = frames.slice(1, endAt);
  expect(replayed.every((f) => f.type === "chat_message"), `only chat_message between online_user_list and catch_up_end: ${JSON.stringify(replayed.map((f) => f.type))}`).toBe(true);
  expect(frames.filter((f) => f.type === "catch_up_end")).toHaveLength(1);
  return { replayed, end: frames[endAt]! };
}

async function persisted(a: string, b: string, n: number) {
  return waitFor(async () => {
    const rows = await messagesBetween(a, b);
    expect(rows.length).toBe(n);
    return rows;
  }, 15000);
}

describe("catch-up after a reconnect (?since=)", () => {
  it.each([
    ["messages only in the Redis stream (no worker)", false],
    ["messages persisted by a worker", true],
  ])("replays the missed messages in order, then catch_up_end, then live ones: %s", async (_what, withWorker) => {
    const prefix = freshPrefix("catchup");
    const [g1, g2] = await Promise.all([startGateway(prefix), startGateway(prefix)]);
    if (withWorker) await startWorker(prefix);
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);
    const a = await connectReady(g1.url, `/ws/${bob}/`, ta);
    const b1 = await connectReady(g2.url, `/ws/${alice}/`, tb);
    const seen: Frame[] = [];
    for (let i = 0; i < 3; i++) {
      await say(a, `before-${i}`);
      seen.push(await b1.next("chat_message"));
    }
    await b1.close();
    const missed: Frame[] = [];
    for (let i = 0; i < 5; i++) missed.push(await say(a, `missed-${i}`));
    if (withWorker) await persisted(alice, bob, 8);

    // Bob comes back on the other node.
    const b2 = await connect(g1.url, `/ws/${alice}/?since=${String(seen.at(-1)!["id"])}`, tb);
    const { replayed, end } = await replayOf(b2);
    expect(replayed).toEqual(missed);
    expect(end).toEqual({ type: "catch_up_end", recovered: true, count: 5 });
    const live = await say(a, "live-0");
    await b2.until((fs) => chatIds(fs).includes(String(live["id"])), 5000, "live message");
    expect(chatIds(nonPresence(b2))).toEqual([...missed, live].map((f) => String(f["id"])));
    expect(nonPresence(b2).map((f) => f.type)).toEqual(["online_user_list", ...missed.map(() => "chat_message"), "catch_up_end", "chat_message"]);

    // Nothing missed: an empty replay that says it is complete.
    const b3 = await connect(g2.url, `/ws/${alice}/?since=${String(live["id"])}`, tb);
    const again = await replayOf(b3);
    expect(again.replayed).toEqual([]);
    expect(again.end).toEqual({ type: "catch_up_end", recovered: true, count: 0 });
    for (const c of [a, b1, b2, b3]) expect(c.schemaViolations).toEqual([]);
  });

  it.each([
    ["no worker: everything only in the Redis stream", false],
    ["a worker persisting and trimming the stream", true],
  ])("has no gap and no duplicate at the seam while the other user keeps sending at a steady rate (%s)", async (_what, withWorker) => {
    const prefix = freshPrefix("seam");
    const [g1, g2] = await Promise.all([startGateway(prefix), startGateway(prefix)]);
    if (withWorker) await startWorker(prefix, { CHAT_WORKER_TRIM_INTERVAL_MS: "100" });
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);
    const a = await connectReady(g1.url, `/ws/${bob}/`, ta);
    const b1 = await connectReady(g2.url, `/ws/${alice}/`, tb);

    // Alice sends one message every 20 ms (50/s, under the per-user rate limit) for the whole test;
    // her own echoes are what was accepted.
    let sent = 0;
    const timer = setInterval(() => a.send({ type: "chat_message", message: `s${sent++}` }), 20);
    const stop = () => clearInterval(timer);
    onTestFinished(stop);
    const accepted = () => chatIds(a.frames);

    await b1.until((fs) => chatIds(fs).length >= 20, 10000, "bob's first messages");
    expect(a.ofType("error"), "alice's sends were all accepted").toEqual([]);
    // Bob's phone enters a tunnel: the socket dies without a close handshake.
    b1.ws.terminate();
    const sawBefore = chatIds(b1.frames);
    const since = sawBefore.at(-1)!;
    // Bob may have seen a message before alice's echo of it arrived: count from bob's last one.
    await a.until((fs) => chatIds(fs).includes(since), 10000, "alice's echo of bob's last message");
    const acceptedAtDrop = accepted().indexOf(since) + 1;
    await a.until((fs) => chatIds(fs).length >= acceptedAtDrop + 30, 10000, "messages sent while bob is away");

    const names = redisNames(prefix);
    if (withWorker) {
      // The message bob saw last is persisted and trimmed from the stream: the replay must read Postgres.
      await waitFor(async () => {
        const [row] = await testSql()<{ stream_position: string }[]>`SELECT stream_position::text FROM messages WHERE id = ${since}`;
        expect(row).toBeDefined();
        const stream = conversationStream(names, alice, bob);
        const left = await testRedis().xrange(stream, streamIdOf(BigInt(row!.stream_position)), streamIdOf(BigInt(row!.stream_position)));
        expect(left).toEqual([]);
      }, 15000);
    } else {
      expect(await messagesBetween(alice, bob)).toEqual([]);
    }

    // Bob reconnects to the other node while alice keeps sending.
    const b2 = await connect(g1.url, `/ws/${alice}/?since=${since}`, tb);
    const { replayed, end } = await replayOf(b2);
    expect(end).toMatchObject({ type: "catch_up_end", recovered: true, count: replayed.length });
    expect(replayed.length).toBeGreaterThanOrEqual(30);
    await b2.until((fs) => chatIds(fs).length >= replayed.length + 20, 10000, "live messages after the replay");
    stop();
    // Every send got its echo: the count is final.
    await waitFor(() => accepted().length === sent, 10000, 20);
    const total = sent;
    await b2.until((fs) => sawBefore.length + chatIds(fs).length >= total, 10000, "every accepted message at bob");

    expect(a.ofType("error"), "alice's sends were all accepted").toEqual([]);
    const atBob = [...sawBefore, ...chatIds(nonPresence(b2))];
    expect(new Set(atBob).size, "duplicates at bob").toBe(atBob.length);
    expect(atBob).toEqual(accepted());
    // The replayed frames are the very events alice's socket received.
    const byId = new Map(a.frames.filter((f) => f.type === "chat_message").map((f) => [f["id"], f]));
    for (const f of replayed) expect(f).toEqual(byId.get(f["id"]));
    if (withWorker) {
      const rows = await persisted(alice, bob, total);
      expect(rows.map((r) => r.id)).toEqual(accepted());
    }
    for (const c of [a, b2]) expect(c.schemaViolations).toEqual([]);
  });

  it.each([
    ["no worker", false],
    ["with a worker", true],
  ])("replays only the newest CHAT_MAX_REPLAY messages and says recovered:false when more were missed (%s)", async (_what, withWorker) => {
    const prefix = freshPrefix("maxreplay");
    const env = { CHAT_MAX_REPLAY: "5" };
    const [g1, g2] = await Promise.all([startGateway(prefix, env), startGateway(prefix, env)]);
    if (withWorker) await startWorker(prefix);
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);
    const a = await connectReady(g1.url, `/ws/${bob}/`, ta);
    const b1 = await connectReady(g2.url, `/ws/${alice}/`, tb);
    const m: Frame[] = [await say(a, "m0")];
    expect((await b1.next("chat_message"))["id"]).toBe(m[0]!["id"]);
    await b1.close();
    for (let i = 1; i <= 12; i++) m.push(await say(a, `m${i}`));
    if (withWorker) await persisted(alice, bob, 13);

    const b2 = await connect(g1.url, `/ws/${alice}/?since=${String(m[0]!["id"])}`, tb);
    const { replayed, end } = await replayOf(b2);
    expect(replayed).toEqual(m.slice(8, 13));
    expect(end).toEqual({ type: "catch_up_end", recovered: false, count: 5 });
    m.push(await say(a, "m13"));
    await b2.until((fs) => chatIds(fs).includes(String(m[13]!["id"])), 5000, "live m13");
    expect(chatIds(nonPresence(b2))).toEqual(m.slice(8, 14).map((f) => String(f["id"])));

    if (withWorker) {
      // As docs/protocol.md says: the rest is paged from the HTTP history before the first replayed id.
      await persisted(alice, bob, 14);
      const res = await fetch(`http://127.0.0.1:${g2.port}/api/rooms/${alice}/messages?before=${String(replayed[0]!["id"])}`, {
        headers: { authorization: `Bearer ${tb}` },
      });
      expect(res.status).toBe(200);
      const page = (await res.json()) as { messages: { id: string }[]; next_cursor: string | null };
      expect(page.messages.map((x) => x.id)).toEqual(m.slice(0, 8).reverse().map((f) => String(f["id"])));
    }

    // Exactly CHAT_MAX_REPLAY missed: complete.
    const b3 = await connect(g2.url, `/ws/${alice}/?since=${String(m[8]!["id"])}`, tb);
    const exact = await replayOf(b3);
    expect(exact.replayed).toEqual(m.slice(9, 14));
    expect(exact.end).toEqual({ type: "catch_up_end", recovered: true, count: 5 });
    for (const c of [a, b2, b3]) expect(c.schemaViolations).toEqual([]);
  });

  it("answers an unknown since id, or another conversation's, with recovered:false and count 0, and then goes live", async () => {
    const prefix = freshPrefix("unknown");
    const g = await startGateway(prefix);
    await startWorker(prefix);
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const carol = uniqueUser("carol");
    const [ta, tb, tc] = await Promise.all([tokenFor(alice), tokenFor(bob), tokenFor(carol)]);
    const a = await connectReady(g.url, `/ws/${bob}/`, ta);
    const c = await connectReady(g.url, `/ws/${bob}/`, tc);
    await say(a, "alice 1");
    const carols = await say(c, "carol to bob");
    await persisted(carol, bob, 1);

    for (const since of [randomUUID(), "0190a0a0-0000-7000-8000-000000000000", String(carols["id"])]) {
      const b = await connect(g.url, `/ws/${alice}/?since=${since}`, tb);
      const { replayed, end } = await replayOf(b);
      expect(replayed).toEqual([]);
      expect(end).toEqual({ type: "catch_up_end", recovered: false, count: 0 });
      const live = await say(a, `live after ${since}`);
      await b.until((fs) => chatIds(fs).includes(String(live["id"])), 5000, "live message");
      expect(chatIds(nonPresence(b))).toEqual([String(live["id"])]);
      expect(JSON.stringify(b.frames)).not.toContain("carol to bob");
      expect(b.schemaViolations).toEqual([]);
      await b.close();
    }
  });

  it("answers unknown since ids without reading the stream while the worker is down and the stream holds 32 MB, and still replays a since only in the stream", async () => {
    // A Redis of the test's own: its output byte counter is the work the gateway asked of it.
    const port = await freePort();
    await startPrivateRedis(port);
    const redisUrl = `redis://127.0.0.1:${port}`;
    const redis = new Redis(redisUrl);
    onTestFinished(() => redis.disconnect());
    const prefix = freshPrefix("bigstream");
    const g = await startGateway(prefix, { REDIS_URL: redisUrl });
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);
    const a = await connectReady(g.url, `/ws/${bob}/`, ta);
    const m: Frame[] = [];
    for (let i = 0; i < 3; i++) m.push(await say(a, `m${i}`));

    // No worker: 2,000 messages of 16 KB of other conversations pile up in the stream of this
    // conversation's partition, as gateways write them.
    const names = redisNames(prefix);
    const stream = conversationStream(names, alice, bob);
    const text = "\u{1F600}".repeat(4096);
    const fill = redis.pipeline();
    for (let i = 0; i < 2000; i++) {
      const entry = { kind: "message", id: uuidv7(), from: `u${i}`, to: `v${i}`, message: text, multimedia_url: null, date_added: new Date().toISOString() };
      fill.xadd(stream, "*", "e", JSON.stringify(entry));
    }
    await fill.exec();
    expect(await redis.xlen(stream)).toBe(2003);
    for (let i = 3; i < 5; i++) m.push(await say(a, `m${i}`));

    const outputBytes = async () => Number(/total_net_output_bytes:(\d+)/.exec(await redis.info("stats"))![1]);
    // Unknown ids of every kind, 16 sockets at once: a v4 uuid, a v7 of long ago, and v7 ids of right
    // now (their time falls among the 32 MB of entries just appended).
    const unknown = [randomUUID(), "0190a0a0-0000-7000-8000-000000000000", ...Array.from({ length: 14 }, () => uuidv7())];
    const before = await outputBytes();
    // Opened as clients do, reconnecting once on a close before the first event (1013: set-up past
    // its deadline; 1006): each lookup pages through up to 1,000 entries of 16 KB in Redis, 3.3 s
    // for all 16 alone, and two loaded full runs left one socket without its first frame.
    const sockets = await Promise.all(unknown.map((since) => connectReady(g.url, `/ws/${alice}/?since=${since}`, tb)));
    for (const b of sockets) {
      const { replayed, end } = await replayOf(b, 30_000);
      expect(replayed).toEqual([]);
      expect(end).toEqual({ type: "catch_up_end", recovered: false, count: 0 });
    }
    const sent = (await outputBytes()) - before;
    // Reading the log would have sent 32 MB per socket; presence and the lookups are a few KB.
    expect(sent, "bytes Redis sent while 16 unknown since ids were answered").toBeLessThan(1024 * 1024);

    // A since that is in the stream but not persisted: the messages after it, all of them, in order.
    const known = await connect(g.url, `/ws/${alice}/?since=${String(m[1]!["id"])}`, tb);
    const { replayed, end } = await replayOf(known, 30000);
    expect(replayed).toEqual(m.slice(2));
    expect(end).toEqual({ type: "catch_up_end", recovered: true, count: 3 });
    expect(await messagesBetween(alice, bob)).toEqual([]);
    for (const c of [a, known, ...sockets]) expect(c.schemaViolations).toEqual([]);
  }, 60_000); // 16 lookups at once in a 32 MB window, on a machine loaded by the other files

  it("refuses a malformed since with 400, and since on a notifications socket with 400", async () => {
    const prefix = freshPrefix("badsince");
    const g = await startGateway(prefix);
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const tb = await tokenFor(bob);
    for (const since of ["abc", "123", "..%2F..%2Fetc", `${randomUUID()}x`, `x${randomUUID()}`, randomUUID().replace(/-/g, "")]) {
      const r = await refusedUpgrade(`${g.url}/ws/${alice}/?since=${since}&token=${tb}`);
      expect(r.status, since).toBe(400);
      expect(r.body["error"], since).toBe("bad_since");
    }
    for (const path of ["/ws/notifications/", `/ws/notifications/${alice}/`]) {
      const r = await refusedUpgrade(`${g.url}${path}?since=${randomUUID()}&token=${tb}`);
      expect(r.status, path).toBe(400);
    }
    // The same sockets without since are accepted.
    const ok = await connectReady(g.url, `/ws/notifications/`, tb);
    expect(ok.frames[0]?.type).toBeDefined();
  });
});
