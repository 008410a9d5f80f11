import { describe, expect, it } from "vitest";
import { connectReady, engines, refusedUpgrade, sharedEngine, tokenFor, uniqueUser, waitFor, type Frame, type TestClient } from "../helpers/index.js";
import { chatPath, conversations, noSchemaViolations, notificationsPath, NO_RATE_LIMIT, say, type Json } from "./support.js";

/** The all-conversations socket with presence events (opt-in). */
const LIST_PATH = "/ws/notifications/?presence=1";
const presenceIn = (frames: Frame[]) => frames.filter((f) => f.type === "presence").map((f) => [f["user"], f["online"]]);
const presenceOf = (c: TestClient) => presenceIn(c.frames);
const onlineIn = async (base: string, token: string) =>
  Object.fromEntries((await conversations(base, token)).map((c: Json) => [c.other_user.username as string, c.online as boolean]));

describe.each(engines)("presence in the conversation list (%s engine)", (kind) => {
  const shared = sharedEngine(kind, NO_RATE_LIMIT);

  it("tells the all-conversations socket who of its partners is online, then each change across nodes, once per user whatever their number of sockets; the API says the same", async () => {
    const engine = shared();
    const [alice, bob, carol, dave] = [uniqueUser("alice"), uniqueUser("bob"), uniqueUser("carol"), uniqueUser("dave")];
    const [ta, tb, tc, td] = await Promise.all([tokenFor(alice), tokenFor(bob), tokenFor(carol), tokenFor(dave)]);
    // Alice has conversations with bob and then carol (the most recent); dave is a stranger.
    for (const [from, token] of [
      [bob, tb],
      [carol, tc],
    ] as const) {
      const chat = await connectReady(engine.nodes[0], chatPath(alice), token);
      await say(chat, `hello from ${from}`);
      await chat.close();
    }
    await waitFor(async () => expect(Object.keys(await onlineIn(engine.http[0], ta))).toEqual([carol, bob]), 10_000);

    // Bob is online (a notifications socket on node 2); carol is not.
    const bob1 = await connectReady(engine.nodes[1], notificationsPath(), tb);
    await waitFor(async () => expect(await onlineIn(engine.http[0], ta)).toEqual({ [carol]: false, [bob]: true }), 10_000);

    // Alice's list socket: the counts, then each partner's state, most recent first.
    const list = await connectReady(engine.nodes[0], LIST_PATH, ta);
    // Without ?presence=1, the same socket as ever: no presence event.
    const plain = await connectReady(engine.nodes[1], notificationsPath(), ta);
    await list.until((f) => f.filter((x) => x.type === "presence").length === 2, 10_000, "the partners' states");
    expect(list.frames.slice(0, 3)).toEqual([
      { type: "unread_count", unread_count: 2 },
      { type: "presence", user: carol, online: false },
      { type: "presence", user: bob, online: true },
    ]);

    // Carol comes online with two sockets on two nodes: one announcement. One closes: none.
    const carol1 = await connectReady(engine.nodes[1], chatPath(dave), tc);
    await list.until((f) => presenceIn(f).length === 3, 10_000, "carol online");
    const carol2 = await connectReady(engine.nodes[0], notificationsPath(), tc);
    await carol2.close();
    // Bob's second socket, on the other node; his first closes: he stays online.
    const bob2 = await connectReady(engine.nodes[0], chatPath(alice), tb);
    await bob1.close();
    expect(await onlineIn(engine.http[1], ta)).toEqual({ [carol]: true, [bob]: true });
    // A stranger coming online is none of alice's business.
    const dave1 = await connectReady(engine.nodes[0], notificationsPath(), td);
    // Carol's last socket closes, then bob's: each goes offline once.
    await carol1.close();
    await list.until((f) => presenceIn(f).length === 4, 10_000, "carol offline");
    await bob2.close();
    await list.until((f) => presenceIn(f).length === 5, 10_000, "bob offline");
    expect(presenceOf(list)).toEqual([
      [carol, false],
      [bob, true],
      [carol, true],
      [carol, false],
      [bob, false],
    ]);
    expect(await onlineIn(engine.http[0], ta)).toEqual({ [carol]: false, [bob]: false });

    // Dave, online all along, starts a conversation with alice: from his message on, he is watched.
    const daveChat = await connectReady(engine.nodes[1], chatPath(alice), td);
    await say(daveChat, "hi alice, I am new here");
    await list.until((f) => presenceIn(f).length === 6, 10_000, "dave's state once he wrote");
    expect(presenceOf(list).at(-1)).toEqual([dave, true]);
    await daveChat.close();
    await dave1.close();
    await list.until((f) => presenceIn(f).length === 7, 10_000, "dave offline");
    expect(presenceOf(list).at(-1)).toEqual([dave, false]);
    expect(list.ofType("error")).toEqual([]);
    expect(plain.frames.map((f) => f.type)).toEqual(["unread_count", "new_message_notification"]);
    noSchemaViolations(list, plain);
  });

  it("takes presence=1 on /ws/notifications/ only, and no other value", async () => {
    const engine = shared();
    const alice = uniqueUser("alice");
    const token = await tokenFor(alice);
    for (const path of ["/ws/notifications/?presence=0", "/ws/notifications/?presence=true", `/ws/notifications/${uniqueUser("bob")}/?presence=1`, `/ws/${uniqueUser("bob")}/?presence=1`]) {
      const refused = await refusedUpgrade(`${engine.nodes[0]}${path}&token=${token}`);
      expect(refused, path).toEqual({ status: 400, body: { error: "bad_presence", message: expect.any(String) } });
    }
  });

  it("watches only the partners of the user's CHAT_PRESENCE_PARTNERS (50) most recent conversations", async () => {
    const engine = shared();
    const alice = uniqueUser("alice");
    const ta = await tokenFor(alice);
    const partners = Array.from({ length: 51 }, (_, i) => uniqueUser(`p${i}`));
    const chat = await connectReady(engine.nodes[0], LIST_PATH, ta);
    // Alice writes to each in turn: the first is the least recent.
    for (const p of partners) {
      const c = await connectReady(engine.nodes[0], chatPath(p), ta);
      await say(c, `to ${p}`);
      await c.close();
    }
    await chat.close();
    await waitFor(async () => {
      const r = await conversations(engine.http[0], ta);
      expect(r.length).toBe(51);
    }, 15_000);
    const list = await connectReady(engine.nodes[1], LIST_PATH, ta);
    await list.until((f) => f.filter((x) => x.type === "presence").length === 50, 10_000, "50 partners' states");
    expect(presenceOf(list).map(([u]) => u)).toEqual(partners.slice(1).reverse());
    // The least recent partner comes online and goes: nothing. The newest one does: both changes.
    const oldest = await connectReady(engine.nodes[0], notificationsPath(), await tokenFor(partners[0]!));
    await oldest.close();
    const newest = await connectReady(engine.nodes[0], notificationsPath(), await tokenFor(partners[50]!));
    await newest.close();
    await list.until((f) => f.filter((x) => x.type === "presence").length === 52, 10_000, "the newest partner's changes");
    expect(presenceOf(list).slice(50)).toEqual([
      [partners[50], true],
      [partners[50], false],
    ]);
    noSchemaViolations(list);
  });
});
