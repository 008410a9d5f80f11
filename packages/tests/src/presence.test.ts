import { describe, expect, it } from "vitest";
import { redisNames } from "@chat/bus";
import {
  connect,
  connectReady,
  freshPrefix,
  sharedPair,
  startGateway,
  testRedis,
  tokenFor,
  uniqueUser,
  waitFor,
  type Frame,
  type TestClient,
} from "./helpers/index.js";

/** The conversation's presence sorted set (see packages/bus/src/names.ts). */
function presenceKey(prefix: string, a: string, b: string): string {
  const names = redisNames(prefix);
  return names.presenceRoom(names.roomId(a, b));
}

/** The presence expiry index of the conversation's partition (see packages/bus/src/names.ts). */
function presenceIndexKey(prefix: string, a: string, b: string): string {
  const names = redisNames(prefix);
  return names.presenceIndex(names.partitionOf(names.roomId(a, b)));
}

/** Takes the next frame of `client` (whatever its type) and checks it. */
async function expectNext(client: TestClient, expected: Record<string, unknown>, timeoutMs = 5000): Promise<void> {
  const frame = await client.next(undefined, timeoutMs);
  expect(frame).toMatchObject(expected);
}

async function expectUserList(client: TestClient, users: string[]): Promise<void> {
  const first = await client.next();
  expect(first.type).toBe("online_user_list");
  expect([...(first["users"] as string[])].sort()).toEqual([...users].sort());
}

let markers = 0;
/**
 * Sends a chat message from `sender` and checks that it is the very next frame on every socket in
 * `sockets`: no user_join / user_leave was published before it. The marker goes through the same
 * gateway command connection as any presence event that the sender's node would have published
 * earlier, so such an event would arrive first.
 */
async function expectNothingPendingBefore(sender: TestClient, sockets: TestClient[]): Promise<void> {
  const marker = `marker-${++markers}-${Date.now()}`;
  sender.send({ type: "chat_message", message: marker });
  for (const s of sockets) await expectNext(s, { type: "chat_message", message: marker });
}


/** Two gateways for the tests that need nothing fresh of them: each has users of its own. */
const pair = sharedPair("presence", { worker: false });

describe("presence", () => {
  it("starts every chat socket with online_user_list of every user with an open socket to the conversation on any node", async () => {
    const [g1, g2] = await pair();
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const carol = uniqueUser("carol");
    const [ta, tb, tc] = await Promise.all([tokenFor(alice), tokenFor(bob), tokenFor(carol)]);

    // Alone: the list holds just the connecting user.
    const a1 = await connect(g1.url, `/ws/${bob}/`, ta);
    await expectUserList(a1, [alice]);

    // Carol is online with alice in another conversation only: not listed in alice and bob's.
    const c1 = await connect(g2.url, `/ws/${alice}/`, tc);
    await expectUserList(c1, [carol]);

    // Bob on the other node sees alice (from node 1) and himself.
    const b1 = await connect(g2.url, `/ws/${alice}`, tb);
    await expectUserList(b1, [alice, bob]);

    // A second socket of alice on node 2 and one of bob on node 1: each user listed once.
    const a2 = await connect(g2.url, `/ws/${bob}/`, ta);
    await expectUserList(a2, [alice, bob]);
    const b2 = await connect(g1.url, `/ws/${alice}/`, tb);
    await expectUserList(b2, [alice, bob]);
    expect((b2.frames[0]!["users"] as string[]).length).toBe(2);

    for (const s of [a1, c1, b1, a2, b2]) expect(s.schemaViolations).toEqual([]);
  });

  it("sends user_join to every socket of the conversation on both nodes when a user's first socket opens, not for later sockets", async () => {
    const [g1, g2] = await pair();
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);

    // Bob joins first: his own socket gets the list, then his own user_join.
    const b1 = await connect(g2.url, `/ws/${alice}/`, tb);
    await expectUserList(b1, [bob]);
    await expectNext(b1, { type: "user_join", user: bob });
    // Bob's second socket, on the other node: no user_join anywhere.
    const b2 = await connect(g1.url, `/ws/${alice}/`, tb);
    await expectUserList(b2, [bob]);
    await expectNothingPendingBefore(b2, [b1, b2]);

    // Alice's first socket (node 1): the joining socket and bob's sockets on both nodes get user_join.
    const a1 = await connect(g1.url, `/ws/${bob}/`, ta);
    await expectUserList(a1, [alice, bob]);
    await expectNext(a1, { type: "user_join", user: alice });
    await expectNext(b1, { type: "user_join", user: alice });
    await expectNext(b2, { type: "user_join", user: alice });

    // Alice's second socket on the same node: nobody gets user_join.
    const a2 = await connect(g1.url, `/ws/${bob}/`, ta);
    await expectUserList(a2, [alice, bob]);
    await expectNothingPendingBefore(a2, [a1, a2, b1, b2]);

    // Alice's third socket on the other node: nobody gets user_join either.
    const a3 = await connect(g2.url, `/ws/${bob}/`, ta);
    await expectUserList(a3, [alice, bob]);
    await expectNothingPendingBefore(a3, [a1, a2, a3, b1, b2]);

    for (const s of [a1, a2, a3, b1, b2]) {
      expect(s.ofType("user_join").filter((f) => f["user"] === alice).length).toBeLessThanOrEqual(1);
      expect(s.schemaViolations).toEqual([]);
    }
  });

  it("sends user_leave only when the user's last socket to the conversation closes, across nodes", async () => {
    const prefix = freshPrefix("presence-leave");
    const [g1, g2] = await Promise.all([startGateway(prefix), startGateway(prefix)]);
    const redis = testRedis();
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const key = presenceKey(prefix, alice, bob);
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);

    const b1 = await connectReady(g1.url, `/ws/${alice}/`, tb);
    await b1.next("user_join");
    const b2 = await connectReady(g2.url, `/ws/${alice}/`, tb);
    const a1 = await connectReady(g1.url, `/ws/${bob}/`, ta);
    await a1.next("user_join");
    await b1.next("user_join");
    await b2.next("user_join");
    const a2 = await connectReady(g2.url, `/ws/${bob}/`, ta);
    const a3 = await connectReady(g1.url, `/ws/${bob}/`, ta);
    await a2.next("online_user_list");
    await a3.next("online_user_list");
    await expectNothingPendingBefore(b1, [a1, a2, a3, b1, b2]);
    expect(await redis.zcard(key)).toBe(5);

    // Alice closes one of her two sockets on node 1: she still has one there and one on node 2.
    await a1.close();
    await waitFor(async () => expect(await redis.zcard(key)).toBe(4));
    await expectNothingPendingBefore(a3, [a2, a3, b1, b2]);

    // She closes her socket on node 2: her socket on node 1 remains.
    await a2.close();
    await waitFor(async () => expect(await redis.zcard(key)).toBe(3));
    await expectNothingPendingBefore(b2, [a3, b1, b2]);

    // Her last socket closes: bob's sockets on both nodes get user_leave, once.
    await a3.close();
    await expectNext(b1, { type: "user_leave", user: alice });
    await expectNext(b2, { type: "user_leave", user: alice });
    await expectNothingPendingBefore(b1, [b1, b2]);

    // The next socket of bob no longer lists alice.
    const b3 = await connect(g2.url, `/ws/${alice}/`, tb);
    await expectUserList(b3, [bob]);
    for (const s of [a1, a2, a3, b1, b2, b3]) expect(s.schemaViolations).toEqual([]);
  });

  it("expires the presence of a gateway killed with SIGKILL: user_leave reaches the other node within the TTL", async () => {
    const prefix = freshPrefix("presence-kill");
    const env = { CHAT_PRESENCE_TTL_MS: "3000" };
    const [g1, g2] = await Promise.all([startGateway(prefix, env), startGateway(prefix, env)]);
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);

    const b = await connectReady(g2.url, `/ws/${alice}/`, tb);
    await b.next("user_join");
    const a = await connectReady(g1.url, `/ws/${bob}/`, ta);
    await expectNext(b, { type: "user_join", user: alice });

    const killedAt = Date.now();
    await g1.stop("SIGKILL");
    const leave = await b.next(undefined, 10_000);
    const elapsed = Date.now() - killedAt;
    expect(leave).toEqual({ type: "user_leave", user: alice });
    // TTL 3 s plus a sweep interval: well within 10 s.
    expect(elapsed).toBeLessThan(8000);
    await a.closed;

    // A new socket's list no longer holds alice; bob, whose node kept refreshing him, is still there.
    const b2 = await connect(g2.url, `/ws/${alice}/`, tb);
    await expectUserList(b2, [bob]);
    // user_leave came once; bob himself never left.
    await expectNothingPendingBefore(b2, [b, b2]);
    expect(b.ofType("user_leave")).toEqual([{ type: "user_leave", user: alice }]);

    // Alice comes back on the live node: she is announced again.
    const a2 = await connect(g2.url, `/ws/${bob}/`, ta);
    await expectUserList(a2, [alice, bob]);
    await expectNext(a2, { type: "user_join", user: alice });
    await expectNext(b, { type: "user_join", user: alice });
    for (const s of [a, a2, b, b2]) expect(s.schemaViolations).toEqual([]);
  });

  it("sends no user_leave when a killed gateway held one of a user's sockets and another node still holds one", async () => {
    const prefix = freshPrefix("presence-kill-other");
    const env = { CHAT_PRESENCE_TTL_MS: "3000" };
    const [g1, g2] = await Promise.all([startGateway(prefix, env), startGateway(prefix, env)]);
    const redis = testRedis();
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const key = presenceKey(prefix, alice, bob);
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);

    const b = await connectReady(g2.url, `/ws/${alice}/`, tb);
    await b.next("user_join");
    const a1 = await connectReady(g1.url, `/ws/${bob}/`, ta);
    await expectNext(b, { type: "user_join", user: alice });
    const a2 = await connect(g2.url, `/ws/${bob}/`, ta);
    await expectUserList(a2, [alice, bob]);
    expect(await redis.zcard(key)).toBe(3);

    await g1.stop("SIGKILL");
    await a1.closed;
    // The dead node's entry is swept; the live ones stay.
    await waitFor(async () => expect(await redis.zrange(key, 0, -1)).toHaveLength(2), 10_000);
    await expectNothingPendingBefore(b, [b, a2]);
    const b2 = await connect(g2.url, `/ws/${alice}/`, tb);
    await expectUserList(b2, [alice, bob]);

    // Her remaining socket closes: now she leaves, once.
    await a2.close();
    await expectNext(b, { type: "user_leave", user: alice });
    await expectNext(b2, { type: "user_leave", user: alice });
    await expectNothingPendingBefore(b2, [b, b2]);
    expect(b.ofType("user_leave")).toHaveLength(1);
  });
  it("announces a user exactly once when two of their sockets open at once on two nodes, and once when both close at once", async () => {
    const [g1, g2] = await pair();
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);
    const b1 = await connect(g1.url, `/ws/${alice}/`, tb);
    await expectUserList(b1, [bob]);
    await expectNext(b1, { type: "user_join", user: bob });
    const b2 = await connect(g2.url, `/ws/${alice}/`, tb);
    await expectUserList(b2, [bob]);

    for (let round = 0; round < 5; round++) {
      const [a1, a2] = await Promise.all([connectReady(g1.url, `/ws/${bob}/`, ta), connectReady(g2.url, `/ws/${bob}/`, ta)]);
      for (const b of [b1, b2]) await expectNext(b, { type: "user_join", user: alice });
      await expectNothingPendingBefore(b1, [b1, b2]);
      await Promise.all([a1.close(), a2.close()]);
      for (const b of [b1, b2]) await expectNext(b, { type: "user_leave", user: alice });
      await expectNothingPendingBefore(b2, [b1, b2]);
    }
  });

  it("keeps user_join and user_leave balanced when a socket closes right after opening", async () => {
    const prefix = freshPrefix("presence-flap");
    const [g1, g2] = await Promise.all([startGateway(prefix), startGateway(prefix)]);
    const redis = testRedis();
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const key = presenceKey(prefix, alice, bob);
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);
    const b = await connectReady(g2.url, `/ws/${alice}/`, tb);
    await b.next("user_join");
    // Bob's second socket, on the other node, sends a marker through that node later.
    const bOther = await connectReady(g1.url, `/ws/${alice}/`, tb);

    for (let i = 0; i < 80; i++) {
      // All on one node, so that node's presence events reach Redis in the order it decided them.
      const a = await connect(g1.url, `/ws/${bob}/`, ta);
      a.ws.terminate();
    }
    // Every one of those sockets is gone from presence.
    await waitFor(async () => expect(await redis.zcard(key)).toBe(2));
    // Markers through both nodes: every presence event either node published is in by then.
    for (const sender of [b, bOther]) {
      const marker = `flap-marker-${sender === b ? 2 : 1}`;
      sender.send({ type: "chat_message", message: marker });
      await b.until((f) => f.some((x) => x.type === "chat_message" && x["message"] === marker), 5000, marker);
    }
    // The last user_leave may still be on its way: a node publishes it once the leave script has
    // answered, and the marker can be accepted in between (CI saw 78 joins and 77 leaves at this point).
    const presenceOf = (frames: Frame[]) => frames.filter((f) => (f.type === "user_join" || f.type === "user_leave") && f["user"] === alice).map((f) => f.type);
    await b.until((f) => {
      const seq = presenceOf(f);
      return seq.filter((t) => t === "user_leave").length === seq.filter((t) => t === "user_join").length;
    }, 5000, "as many user_leave as user_join");
    // Whatever interleaving happened, bob saw alice join and leave alternately, never leave unannounced.
    const seq = presenceOf(b.frames);
    expect(seq).toEqual(seq.map((_, i) => (i % 2 === 0 ? "user_join" : "user_leave")));
  });
  it("sends one user_leave when a user's live socket closes while their socket on a killed gateway has expired but is not yet swept", async () => {
    const prefix = freshPrefix("presence-expired-close");
    const env = { CHAT_PRESENCE_TTL_MS: "3000" };
    const deadNode = `dead-${prefix.split(":")[2]}`;
    const [g1, g2] = await Promise.all([startGateway(prefix, { ...env, CHAT_NODE_ID: deadNode }), startGateway(prefix, env)]);
    const redis = testRedis();
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const key = presenceKey(prefix, alice, bob);
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);

    const b = await connectReady(g2.url, `/ws/${alice}/`, tb);
    await b.next("user_join");
    const a1 = await connectReady(g1.url, `/ws/${bob}/`, ta);
    await expectNext(b, { type: "user_join", user: alice });
    const a2 = await connectReady(g2.url, `/ws/${bob}/`, ta);
    const members = await redis.zrange(key, 0, -1);
    const deadMember = members.find((m) => m.startsWith(`${alice}|${deadNode}:`));
    expect(deadMember).toBeDefined();

    await g1.stop("SIGKILL");
    await a1.closed;
    // As soon as the dead node's entry is past its expiry (by Redis' clock), close alice's live socket:
    // the sweep runs only every few hundred ms, so it has most likely not removed the entry yet.
    await waitFor(
      async () => {
        const [score, [sec, usec]] = await Promise.all([redis.zscore(key, deadMember!), redis.time()]);
        return score === null || Number(score) <= Number(sec) * 1000 + Math.floor(Number(usec) / 1000);
      },
      10_000,
      5,
    );
    await a2.close();
    await expectNext(b, { type: "user_leave", user: alice }, 10_000);
    // The sweep removes the dead entry too (the room is then bob's alone)...
    await waitFor(async () => expect(await redis.zrange(key, 0, -1)).toEqual([expect.stringMatching(new RegExp(`^${bob}\\|`))]), 10_000);
    const presenceIndex = presenceIndexKey(prefix, alice, bob);
    await waitFor(async () => expect((await redis.zrange(presenceIndex, 0, -1)).filter((e) => e.includes(`\n${alice}|`))).toEqual([]), 10_000);
    // ...without announcing alice's departure a second time.
    await expectNothingPendingBefore(b, [b]);
    expect(b.ofType("user_leave")).toEqual([{ type: "user_leave", user: alice }]);
  });
});
