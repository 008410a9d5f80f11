import { describe, expect, it } from "vitest";
import { connect, connectReady, engines, sharedEngine, tokenFor, uniqueUser, type TestClient } from "../helpers/index.js";
import { chatPath, noSchemaViolations } from "./support.js";

async function expectUserList(client: TestClient, users: string[]): Promise<void> {
  const first = await client.next();
  expect(first.type).toBe("online_user_list");
  expect([...(first["users"] as string[])].sort()).toEqual([...users].sort());
}

async function expectNext(client: TestClient, expected: Record<string, unknown>): Promise<void> {
  expect(await client.next(undefined, 5000)).toEqual(expected);
}

let markers = 0;
/**
 * Sends a chat message from `sender` and checks it is the very next frame on every socket given:
 * no user_join / user_leave is pending before it (presence events and messages of a conversation go
 * out on the same ordered channel).
 */
async function expectNothingPendingBefore(sender: TestClient, sockets: TestClient[]): Promise<void> {
  const marker = `marker-${++markers}`;
  sender.send({ type: "chat_message", message: marker });
  for (const s of sockets) expect(await s.next(undefined, 5000)).toMatchObject({ type: "chat_message", message: marker });
}

describe.each(engines)("presence (%s engine)", (kind) => {
  const shared = sharedEngine(kind);
  it("starts every chat socket with online_user_list of the users with a socket to the conversation, on any entry point", async () => {
    const engine = shared();
    const [n0, n1] = engine.nodes;
    const [alice, bob, carol] = [uniqueUser("alice"), uniqueUser("bob"), uniqueUser("carol")];
    const [ta, tb, tc] = await Promise.all([tokenFor(alice), tokenFor(bob), tokenFor(carol)]);

    const a1 = await connect(n0, chatPath(bob), ta);
    await expectUserList(a1, [alice]);
    // Carol is online with alice in another conversation only: not listed in alice and bob's.
    const c1 = await connect(n1, chatPath(alice), tc);
    await expectUserList(c1, [carol]);
    const b1 = await connect(n1, `/ws/${alice}`, tb);
    await expectUserList(b1, [alice, bob]);
    // Second sockets: each user listed once.
    const a2 = await connect(n1, chatPath(bob), ta);
    await expectUserList(a2, [alice, bob]);
    const b2 = await connect(n0, chatPath(alice), tb);
    await expectUserList(b2, [alice, bob]);
    expect(b2.frames[0]!["users"]).toHaveLength(2);
    noSchemaViolations(a1, c1, b1, a2, b2);
  });

  it("sends user_join when a user's first socket opens (to it too, after its list), none for later sockets, and user_leave when the last closes", async () => {
    const engine = shared();
    const [n0, n1] = engine.nodes;
    const [alice, bob] = [uniqueUser("alice"), uniqueUser("bob")];
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);

    const b1 = await connect(n1, chatPath(alice), tb);
    await expectUserList(b1, [bob]);
    await expectNext(b1, { type: "user_join", user: bob });
    // Bob's second socket, on the other entry point: no user_join anywhere.
    const b2 = await connect(n0, chatPath(alice), tb);
    await expectUserList(b2, [bob]);
    await expectNothingPendingBefore(b2, [b1, b2]);

    // Alice's first socket: the joining socket and bob's sockets get user_join.
    const a1 = await connect(n0, chatPath(bob), ta);
    await expectUserList(a1, [alice, bob]);
    await expectNext(a1, { type: "user_join", user: alice });
    await expectNext(b1, { type: "user_join", user: alice });
    await expectNext(b2, { type: "user_join", user: alice });
    // Alice's second and third sockets: nobody gets user_join.
    const a2 = await connect(n0, chatPath(bob), ta);
    await expectUserList(a2, [alice, bob]);
    await expectNothingPendingBefore(a2, [a1, a2, b1, b2]);
    const a3 = await connect(n1, chatPath(bob), ta);
    await expectUserList(a3, [alice, bob]);
    await expectNothingPendingBefore(a3, [a1, a2, a3, b1, b2]);

    // Closing all but her last socket: no user_leave.
    await a1.close();
    await expectNothingPendingBefore(a3, [a2, a3, b1, b2]);
    await a2.close();
    await expectNothingPendingBefore(b2, [a3, b1, b2]);
    // Her last socket closes: bob's sockets on both entry points get user_leave, once.
    await a3.close();
    await expectNext(b1, { type: "user_leave", user: alice });
    await expectNext(b2, { type: "user_leave", user: alice });
    await expectNothingPendingBefore(b1, [b1, b2]);
    // A new socket no longer lists alice; when she comes back she is announced again.
    const b3 = await connect(n1, chatPath(alice), tb);
    await expectUserList(b3, [bob]);
    const a4 = await connectReady(n1, chatPath(bob), ta);
    expect([...(a4.frames[0]!["users"] as string[])].sort()).toEqual([alice, bob].sort());
    for (const s of [b1, b2, b3]) await expectNext(s, { type: "user_join", user: alice });
    for (const s of [a1, a2, a3, a4, b1, b2, b3]) expect(s.ofType("error")).toEqual([]);
    noSchemaViolations(a1, a2, a3, a4, b1, b2, b3);
  });

  it("keeps presence per conversation: leaving one conversation says nothing in another", async () => {
    const engine = shared();
    const [n0, n1] = engine.nodes;
    const [alice, bob, carol] = [uniqueUser("alice"), uniqueUser("bob"), uniqueUser("carol")];
    const [ta, tb, tc] = await Promise.all([tokenFor(alice), tokenFor(bob), tokenFor(carol)]);
    const b = await connectReady(n0, chatPath(alice), tb);
    const c = await connectReady(n1, chatPath(alice), tc);
    const aToBob = await connectReady(n1, chatPath(bob), ta);
    const aToCarol = await connectReady(n0, chatPath(carol), ta);
    await b.next("user_join");
    await expectNext(b, { type: "user_join", user: alice });
    await c.next("user_join");
    await expectNext(c, { type: "user_join", user: alice });
    await aToBob.close();
    await expectNext(b, { type: "user_leave", user: alice });
    // Carol's conversation with alice: alice is still there; the next frame is alice's message.
    await expectNothingPendingBefore(aToCarol, [c]);
    expect(c.ofType("user_leave")).toEqual([]);
    noSchemaViolations(b, c, aToBob, aToCarol);
  });
});
