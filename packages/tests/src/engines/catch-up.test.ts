import { randomUUID } from "node:crypto";
import { describe, expect, it } from "vitest";
import { connect, connectReady, engines, refusedUpgrade, sharedEngine, startEngine, tokenFor, uniqueUser, waitFor, type Frame, type TestClient } from "../helpers/index.js";
import { chatIds, chatPath, history, noSchemaViolations, notificationsPath, say, withoutPresence } from "./support.js";

/** The replay part of a socket opened with ?since=: the frames up to catch_up_end, checked for shape. */
async function replayOf(c: TestClient): Promise<{ replayed: Frame[]; end: Frame }> {
  await c.until((fs) => fs.some((f) => f.type === "catch_up_end"), 10000, "catch_up_end");
  const frames = withoutPresence(c.frames);
  const endAt = frames.findIndex((f) => f.type === "catch_up_end");
  expect(frames[0]?.type, "first frame").toBe("online_user_list");
  const replayed = frames.slice(1, endAt);
  expect(replayed.map((f) => f.type), "only chat_message before catch_up_end").toEqual(replayed.map(() => "chat_message"));
  expect(frames.filter((f) => f.type === "catch_up_end")).toHaveLength(1);
  return { replayed, end: frames[endAt]! };
}

describe.each(engines)("catch-up with ?since= (%s engine)", (kind) => {
  const shared = sharedEngine(kind);
  it("replays what was missed in order, then catch_up_end, then live messages, each exactly once", async () => {
    const engine = shared();
    const [alice, bob] = [uniqueUser("alice"), uniqueUser("bob")];
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);
    const a = await connectReady(engine.nodes[0], chatPath(bob), ta);
    const b1 = await connectReady(engine.nodes[1], chatPath(alice), tb);
    const seen: Frame[] = [];
    for (let i = 0; i < 3; i++) {
      await say(a, `before-${i}`);
      seen.push(await b1.next("chat_message"));
    }
    await b1.close();
    const missed: Frame[] = [];
    for (let i = 0; i < 5; i++) missed.push(await say(a, `missed-${i}`));

    // Bob comes back, on the other entry point, right away: some may not be persisted yet.
    const b2 = await connect(engine.nodes[0], chatPath(alice, String(seen.at(-1)!["id"])), tb);
    const { replayed, end } = await replayOf(b2);
    expect(replayed).toEqual(missed);
    expect(end).toEqual({ type: "catch_up_end", recovered: true, count: 5 });
    const live = await say(a, "live-0");
    await b2.until((fs) => chatIds(fs).includes(String(live["id"])), 5000, "live message");
    expect(withoutPresence(b2.frames).map((f) => f.type)).toEqual(["online_user_list", ...missed.map(() => "chat_message"), "catch_up_end", "chat_message"]);
    expect(chatIds(b2.frames)).toEqual([...missed, live].map((f) => String(f["id"])));

    // Once everything is persisted, a replay from the first message reads the same.
    await waitFor(async () => expect(await history(engine.http[0], bob, ta)).toHaveLength(9), 10000);
    const b3 = await connect(engine.nodes[1], chatPath(alice, String(seen[0]!["id"])), tb);
    const fromStart = await replayOf(b3);
    expect(fromStart.replayed).toEqual([...seen.slice(1), ...missed, live]);
    expect(fromStart.end).toEqual({ type: "catch_up_end", recovered: true, count: 8 });

    // Nothing missed: an empty, complete replay.
    const b4 = await connect(engine.nodes[1], chatPath(alice, String(live["id"])), tb);
    const again = await replayOf(b4);
    expect(again.replayed).toEqual([]);
    expect(again.end).toEqual({ type: "catch_up_end", recovered: true, count: 0 });
    noSchemaViolations(a, b1, b2, b3, b4);
  });

  it("has no gap and no duplicate at the seam when the other user keeps sending during the reconnect", async () => {
    const engine = shared();
    const [alice, bob] = [uniqueUser("alice"), uniqueUser("bob")];
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);
    const a = await connectReady(engine.nodes[0], chatPath(bob), ta);
    const b1 = await connectReady(engine.nodes[1], chatPath(alice), tb);
    let sent = 0;
    const total = 120;
    // 50 messages a second (within the default rate limit) for the whole test.
    const timer = setInterval(() => {
      if (sent < total) a.send({ type: "chat_message", message: `s${sent++}` });
    }, 20);
    try {
      await b1.until((fs) => chatIds(fs).length >= 20, 10000, "bob's first messages");
      // Bob's connection dies without a close handshake.
      b1.ws.terminate();
      const sawBefore = chatIds(b1.frames);
      await a.until((fs) => chatIds(fs).length >= sawBefore.length + 15, 10000, "messages while bob is away");
      const b2 = await connect(engine.nodes[0], chatPath(alice, sawBefore.at(-1)!), tb);
      const { replayed, end } = await replayOf(b2);
      expect(end).toEqual({ type: "catch_up_end", recovered: true, count: replayed.length });
      expect(replayed.length).toBeGreaterThanOrEqual(15);
      await waitFor(() => chatIds(a.frames).length === total, 15000);
      await b2.until((fs) => sawBefore.length + chatIds(fs).length >= total, 10000, "every message at bob");
      const atBob = [...sawBefore, ...chatIds(b2.frames)];
      expect(atBob).toEqual(chatIds(a.frames));
      expect(a.ofType("error")).toEqual([]);
      noSchemaViolations(a, b2);
    } finally {
      clearInterval(timer);
    }
  });

  it("replays only the newest CHAT_MAX_REPLAY and says recovered:false when more were missed; the rest is in the history", async () => {
    const engine = await startEngine(kind, { CHAT_MAX_REPLAY: "5" });
    const [alice, bob] = [uniqueUser("alice"), uniqueUser("bob")];
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);
    const a = await connectReady(engine.nodes[0], chatPath(bob), ta);
    const m: Frame[] = [];
    for (let i = 0; i < 13; i++) m.push(await say(a, `m${i}`));
    const b = await connect(engine.nodes[1], chatPath(alice, String(m[0]!["id"])), tb);
    const { replayed, end } = await replayOf(b);
    expect(replayed).toEqual(m.slice(8, 13));
    expect(end).toEqual({ type: "catch_up_end", recovered: false, count: 5 });
    // As docs/protocol.md says: the rest is paged from the history before the first replayed id.
    await waitFor(async () => expect(await history(engine.http[1], alice, tb)).toHaveLength(13), 10000);
    const r = await fetch(`${engine.http[1]}/api/rooms/${alice}/messages?before=${String(replayed[0]!["id"])}`, { headers: { authorization: `Bearer ${tb}` } });
    expect(((await r.json()) as { messages: { id: string }[] }).messages.map((x) => x.id)).toEqual(m.slice(0, 8).reverse().map((f) => f["id"]));
    // Exactly CHAT_MAX_REPLAY missed: complete.
    const exact = await replayOf(await connect(engine.nodes[0], chatPath(alice, String(m[7]!["id"])), tb));
    expect(exact.replayed).toEqual(m.slice(8, 13));
    expect(exact.end).toEqual({ type: "catch_up_end", recovered: true, count: 5 });
    noSchemaViolations(a, b);
  });

  it("answers an unknown since, or another conversation's id, with recovered:false and count 0, then goes live; refuses a malformed since", async () => {
    const engine = shared();
    const [alice, bob, carol] = [uniqueUser("alice"), uniqueUser("bob"), uniqueUser("carol")];
    const [ta, tb, tc] = await Promise.all([tokenFor(alice), tokenFor(bob), tokenFor(carol)]);
    const a = await connectReady(engine.nodes[0], chatPath(bob), ta);
    const c = await connectReady(engine.nodes[1], chatPath(bob), tc);
    await say(a, "alice 1");
    const carols = await say(c, "carol to bob");
    for (const since of [randomUUID(), "0190a0a0-0000-7000-8000-000000000000", String(carols["id"])]) {
      const b = await connect(engine.nodes[1], chatPath(alice, since), tb);
      const { replayed, end } = await replayOf(b);
      expect(replayed).toEqual([]);
      expect(end).toEqual({ type: "catch_up_end", recovered: false, count: 0 });
      const live = await say(a, `live after ${since}`);
      await b.until((fs) => chatIds(fs).includes(String(live["id"])), 5000, "live message");
      expect(chatIds(b.frames)).toEqual([String(live["id"])]);
      expect(JSON.stringify(b.frames)).not.toContain("carol to bob");
      noSchemaViolations(b);
      await b.close();
    }
    for (const since of ["abc", "123", `${randomUUID()}x`]) {
      const r = await refusedUpgrade(`${engine.nodes[0]}${chatPath(alice, since)}&token=${tb}`);
      expect(r.status, since).toBe(400);
      expect(r.body).toEqual({ error: "bad_since", message: expect.any(String) });
    }
    const onNotifications = await refusedUpgrade(`${engine.nodes[1]}${notificationsPath()}?since=${randomUUID()}&token=${tb}`);
    expect(onNotifications.status).toBe(400);
    expect(onNotifications.body).toMatchObject({ error: "bad_since" });
  });
});
