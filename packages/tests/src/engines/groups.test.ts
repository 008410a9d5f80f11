import { describe, expect, it } from "vitest";
import { connect, connectReady, engines, sharedEngine, tokenFor, uniqueUser, type TestClient } from "../helpers/index.js";
import {
  UUID_V7,
  api,
  apiSend,
  conversations,
  createGroup,
  groupChatPath,
  groupHistory,
  groupNotificationsPath,
  noSchemaViolations,
  notificationsPath,
  say,
  uploadPng,
  type Json,
} from "./support.js";

/** Opens a socket that must be refused after the upgrade, before any event; resolves to its close code. */
async function refusedSocket(base: string, path: string, token: string): Promise<number> {
  const c = await connect(base, path, token);
  await c.until(() => c.closeCode !== null, 10_000, `close of ${path}`);
  expect(c.frames, `frames before the close of ${path}`).toEqual([]);
  return c.closeCode!;
}

const closedWith = async (c: TestClient, code: number, what: string) => {
  await c.until(() => c.closeCode !== null, 10_000, what);
  expect(c.closeCode, what).toBe(code);
};

describe.each(engines)("group conversations (%s engine)", (kind) => {
  const shared = sharedEngine(kind);

  it("lets three members chat on every node, counts each member's unread, tells who read and who types, and keeps everyone else out", async () => {
    const engine = shared();
    const [http0, http1] = engine.http as [string, string];
    const [alice, bob, carol, dave] = [uniqueUser("alice"), uniqueUser("bob"), uniqueUser("carol"), uniqueUser("dave")];
    const [ta, tb, tc, td] = (await Promise.all([alice, bob, carol, dave].map((u) => tokenFor(u)))) as [string, string, string, string];

    const created = await apiSend(http0, "POST", "/api/groups", ta, { name: "  Trip planning ", members: [bob, carol, bob, alice] });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    expect(created.body).toEqual({ id: expect.stringMatching(UUID_V7), name: "Trip planning", members: [alice, bob, carol].sort(), admins: [alice], created_at: expect.any(String) });
    const id: string = created.body.id;
    for (const [base, token] of [[http0, tb], [http1, tc]] as const) expect(await api(base, `/api/groups/${id}`, token)).toEqual({ status: 200, body: created.body });

    // Strangers: the same 404 for this group as for one that does not exist, on every path and socket.
    const missing = "01900000-0000-7000-8000-000000000000";
    for (const path of [`/api/groups/${id}`, `/api/groups/${id}/messages`, `/api/groups/${missing}`, "/api/groups/not-a-uuid"]) {
      const r = await api(http1, path, td);
      expect(r.status, path).toBe(404);
      expect(r.body.error, path).toBe("not_found");
    }
    for (const [method, path, body] of [
      ["PATCH", `/api/groups/${id}`, { name: "mine now" }],
      ["POST", `/api/groups/${id}/members`, { username: dave }],
      ["DELETE", `/api/groups/${id}/members/${bob}`, undefined],
    ] as const) {
      expect((await apiSend(http0, method, path, td, body)).status, `${method} ${path} by a stranger`).toBe(404);
    }
    for (const path of [groupChatPath(id), groupNotificationsPath(id), groupChatPath(missing)]) {
      expect(await refusedSocket(engine.nodes[1], path, td), path).toBe(4004);
    }
    // A member who is not an admin.
    expect((await apiSend(http0, "PATCH", `/api/groups/${id}`, tb, { name: "bob's" })).body.error).toBe("forbidden");
    expect((await apiSend(http0, "POST", `/api/groups/${id}/members`, tb, { username: dave })).status).toBe(403);

    const a = await connectReady(engine.nodes[0], groupChatPath(id), ta);
    const b = await connectReady(engine.nodes[1], groupChatPath(id), tb);
    const c = await connectReady(engine.nodes[0], groupChatPath(id), tc);
    await a.until((f) => [bob, carol].every((u) => f.some((x) => x.type === "user_join" && x["user"] === u)), 10_000, "bob and carol join");
    const bobGroupNotes = await connectReady(engine.nodes[1], groupNotificationsPath(id), tb);
    expect(bobGroupNotes.frames[0]).toEqual({ type: "single_conversation_unread_count", unread_count: 0 });
    const carolAll = await connectReady(engine.nodes[1], notificationsPath(), tc);
    expect(carolAll.frames[0]).toEqual({ type: "unread_count", unread_count: 0 });

    // One message reaches every member's socket, the sender's echo included, on both nodes.
    const hello = await say(a, "hello group");
    expect(hello).toEqual({
      type: "chat_message",
      id: expect.stringMatching(UUID_V7),
      message: "hello group",
      multimedia_url: null,
      date_added: expect.any(String),
      from_user: { username: alice },
      to_user: null,
      room: id,
      client_id: "hello group",
    });
    for (const s of [b, c]) expect(await s.next("chat_message", 10_000)).toEqual(hello);
    const fromBob = await say(b, "hi all");
    for (const s of [a, c]) expect(await s.next("chat_message", 10_000)).toEqual(fromBob);

    // Per member notifications, with each member's own counts.
    expect(await bobGroupNotes.next("single_conversation_new_message_notification", 10_000)).toEqual({ type: "single_conversation_new_message_notification" });
    expect(await bobGroupNotes.next("single_conversation_unread_count", 10_000)).toEqual({ type: "single_conversation_unread_count", unread_count: 1 });
    await carolAll.until((f) => f.some((x) => x.type === "new_message_notification" && x["unread_count"] === 2), 10_000, "carol's total reaches 2");
    const carolsGroup = async () => (await conversations(http1, tc)).find((x: Json) => x.id === id);
    await expect.poll(carolsGroup, { timeout: 10_000 }).toMatchObject({ kind: "group", id, name: "Trip planning", other_user: null, unread_count: 2 });
    expect((await carolsGroup()).last_message).toMatchObject({ id: fromBob["id"], to_user: null, content: "hi all" });
    expect((await carolsGroup()).online).toBeUndefined();

    // Typing: the other members, never the typist.
    b.send({ type: "typing" });
    for (const s of [a, c]) expect(await s.next("typing", 10_000)).toEqual({ type: "typing", user: bob, room: id });

    // Carol reads: the others learn how far, her counts drop to 0, the history says who read what.
    c.send({ type: "read_messages" });
    for (const s of [a, b]) {
      expect(await s.next("read_receipt", 10_000)).toEqual({ type: "read_receipt", user: carol, room: id, last_read_id: fromBob["id"], read_at: expect.any(String) });
    }
    await carolAll.until((f) => f.some((x) => x.type === "unread_count" && x["unread_count"] === 0), 10_000, "carol's total back to 0");
    const items = await groupHistory(http0, id, ta);
    expect(items.map((m: Json) => [m.id, m.read_by])).toEqual([
      [fromBob["id"], [carol]],
      [hello["id"], [carol]],
      [expect.stringMatching(UUID_V7), []],
    ]);
    expect(items[2]).toMatchObject({ from_user: { username: alice }, to_user: null, event: { event: "created", by: alice, name: "Trip planning", members: [alice, bob, carol].sort() } });
    // Bob has not read: alice's message is unread for him only.
    expect((await conversations(http0, tb)).find((x: Json) => x.id === id).unread_count).toBe(1);
    expect(b.ofType("typing")).toEqual([]);
    expect(c.ofType("read_receipt")).toEqual([]);

    for (const s of [a, b, c, bobGroupNotes, carolAll]) expect(s.ofType("error")).toEqual([]);
    noSchemaViolations(a, b, c, bobGroupNotes, carolAll);
  });

  it("adds and removes members (closing a removed member's sockets with 4003), renames, records it all in the history, and holds the member limit", async () => {
    const engine = shared();
    const [http0, http1] = engine.http as [string, string];
    const [alice, bob, carol, dave] = [uniqueUser("alice"), uniqueUser("bob"), uniqueUser("carol"), uniqueUser("dave")];
    const [ta, tb, tc, td] = (await Promise.all([alice, bob, carol, dave].map((u) => tokenFor(u)))) as [string, string, string, string];
    const id = await createGroup(http0, ta, "Band", [bob, carol]);

    const a = await connectReady(engine.nodes[0], groupChatPath(id), ta);
    const c = await connectReady(engine.nodes[1], groupChatPath(id), tc);
    const carolGroupNotes = await connectReady(engine.nodes[0], groupNotificationsPath(id), tc);
    const carolAll = await connectReady(engine.nodes[1], notificationsPath(), tc);
    const early = await say(a, "before dave");
    await c.next("chat_message", 10_000);
    await carolAll.until((f) => f.some((x) => x.type === "new_message_notification"), 10_000, "carol's notification");

    // Added: dave may connect now, and what was said before is history, not unread, for him.
    const added = await apiSend(http1, "POST", `/api/groups/${id}/members`, ta, { username: dave });
    expect(added.status, JSON.stringify(added.body)).toBe(200);
    expect(added.body.members).toEqual([alice, bob, carol, dave].sort());
    expect(await a.next("group_event", 10_000)).toMatchObject({ type: "group_event", room: id, event: "member_added", by: alice, user: dave });
    // Adding him again changes nothing.
    expect((await apiSend(http0, "POST", `/api/groups/${id}/members`, ta, { username: dave })).body).toEqual(added.body);
    const d = await connectReady(engine.nodes[1], groupChatPath(id), td);
    expect((await conversations(http1, td)).find((x: Json) => x.id === id)).toMatchObject({ kind: "group", unread_count: 0 });
    expect((await groupHistory(http1, id, td)).map((m: Json) => m.id)).toContain(early["id"]);

    // Removed while connected: carol's group sockets close with 4003; her other socket stays, with her total without the group.
    const removed = await apiSend(http0, "DELETE", `/api/groups/${id}/members/${carol}`, ta);
    expect(removed.status, JSON.stringify(removed.body)).toBe(200);
    expect(removed.body.members).toEqual([alice, bob, dave].sort());
    await closedWith(c, 4003, "carol's chat socket");
    await closedWith(carolGroupNotes, 4003, "carol's group notifications socket");
    await carolAll.until((f) => f.at(-1)?.type === "unread_count" && f.at(-1)?.["unread_count"] === 0, 10_000, "carol's total without the group");
    expect(carolAll.closeCode).toBeNull();
    for (const s of [a, d]) await s.until((f) => f.some((x) => x.type === "group_event" && x["event"] === "member_removed" && x["user"] === carol), 10_000, "carol's removal");
    expect((await api(http1, `/api/groups/${id}`, tc)).status).toBe(404);
    expect(await refusedSocket(engine.nodes[0], groupChatPath(id), tc)).toBe(4004);
    expect((await conversations(http1, tc)).find((x: Json) => x.id === id)).toBeUndefined();

    // A member who is not an admin removes only themselves; bob leaves.
    expect((await apiSend(http0, "DELETE", `/api/groups/${id}/members/${dave}`, tb)).status).toBe(403);
    expect((await apiSend(http0, "DELETE", `/api/groups/${id}/members/${bob}`, tb)).status).toBe(200);
    const renamed = await apiSend(http1, "PATCH", `/api/groups/${id}`, ta, { name: "Band (2027)" });
    expect(renamed.body).toMatchObject({ id, name: "Band (2027)", members: [alice, dave].sort(), admins: [alice] });
    expect((await apiSend(http1, "PATCH", `/api/groups/${id}`, ta, { name: "\u0007" })).body.error).toBe("bad_name");
    // The last admin leaves: the remaining member becomes admin.
    expect((await apiSend(http0, "DELETE", `/api/groups/${id}/members/${alice}`, ta)).status).toBe(200);
    await closedWith(a, 4003, "alice's chat socket after leaving");
    expect((await api(http0, `/api/groups/${id}`, td)).body).toMatchObject({ members: [dave], admins: [dave] });

    const events = (await groupHistory(http0, id, td)).filter((m: Json) => m.event !== undefined).map((m: Json) => m.event);
    expect(events).toEqual([
      { event: "member_left", by: alice, user: alice },
      { event: "renamed", by: alice, name: "Band (2027)" },
      { event: "member_left", by: bob, user: bob },
      { event: "member_removed", by: alice, user: carol },
      { event: "member_added", by: alice, user: dave },
      { event: "created", by: alice, name: "Band", members: [alice, bob, carol].sort() },
    ]);

    // The member limit (CHAT_GROUP_MAX_MEMBERS, 256 by default): a group of 256, then one more is refused.
    const crowd = Array.from({ length: 255 }, (_, i) => `${dave}-${i}`);
    expect((await apiSend(http0, "POST", "/api/groups", td, { name: "too many", members: [...crowd, `${dave}-x`] })).status).toBe(409);
    const big = await createGroup(http0, td, "crowd", crowd);
    const over = await apiSend(http0, "POST", `/api/groups/${big}/members`, td, { username: alice });
    expect(over).toEqual({ status: 409, body: { error: "group_full", message: "a group has at most 256 members" } });
    expect((await api(http0, `/api/groups/${big}`, td)).body.members).toHaveLength(256);

    for (const s of [a, c, d, carolGroupNotes, carolAll]) expect(s.ofType("error")).toEqual([]);
    noSchemaViolations(a, c, d, carolGroupNotes, carolAll);
  });

  it("lets members, and only members, read a file sent in the group, and replays what a member missed with ?since=", async () => {
    const engine = shared();
    const [http0, http1] = engine.http as [string, string];
    const [alice, bob, dave] = [uniqueUser("alice"), uniqueUser("bob"), uniqueUser("dave")];
    const [ta, tb, td] = (await Promise.all([alice, bob, dave].map((u) => tokenFor(u)))) as [string, string, string];
    const id = await createGroup(http0, ta, "files", [bob]);
    const a = await connectReady(engine.nodes[0], groupChatPath(id), ta);
    const b = await connectReady(engine.nodes[1], groupChatPath(id), tb);

    const file = await uploadPng(http0, ta);
    const withFile = await say(a, "a picture", { multimedia_url: file.file_location, file_identifier: file.file_identifier });
    expect(await b.next("chat_message", 10_000)).toEqual(withFile);
    const media = (token: string) => fetch(`${http1}/chat-media/${file.file_identifier}`, { headers: { authorization: `Bearer ${token}` } }).then((r) => r.status);
    // Readable by the members once the message is persisted; never by anyone else.
    await expect.poll(() => media(tb), { timeout: 10_000 }).toBe(200);
    expect(await media(td)).toBe(404);
    expect((await api(http1, `/api/rooms/check-url/?message_id=${withFile["id"]}`, tb)).status).toBe(200);
    expect((await api(http1, `/api/rooms/check-url/?message_id=${withFile["id"]}`, td)).body.error).toBe("message_not_found");

    // Bob goes away; alice sends three; bob comes back with the last id he saw.
    await b.close();
    const missed = [await say(a, "one"), await say(a, "two"), await say(a, "three")];
    const back = await connectReady(engine.nodes[1], groupChatPath(id, String(withFile["id"])), tb);
    await back.until((f) => f.some((x) => x.type === "catch_up_end"), 10_000, "catch_up_end");
    expect(back.ofType("chat_message")).toEqual(missed);
    expect(back.ofType("catch_up_end")).toEqual([{ type: "catch_up_end", recovered: true, count: 3 }]);
    // A since of another conversation is no position in this one.
    const elsewhere = await say(await connectReady(engine.nodes[0], `/ws/${bob}/`, ta), "1:1");
    const wrong = await connectReady(engine.nodes[0], groupChatPath(id, String(elsewhere["id"])), tb);
    await wrong.until((f) => f.some((x) => x.type === "catch_up_end"), 10_000, "catch_up_end");
    expect(wrong.ofType("catch_up_end")).toEqual([{ type: "catch_up_end", recovered: false, count: 0 }]);

    for (const s of [a, back, wrong]) expect(s.ofType("error")).toEqual([]);
    noSchemaViolations(a, back, wrong);
  });

  it("refuses malformed and oversized group requests with a clear 4xx, and creates nothing", async () => {
    const engine = shared();
    const http0 = engine.http[0] as string;
    const [alice, bob] = [uniqueUser("alice"), uniqueUser("bob")];
    const [ta, tb] = (await Promise.all([tokenFor(alice), tokenFor(bob)])) as [string, string];
    const raw = async (body: string, contentType = "application/json") => {
      const res = await fetch(`${http0}/api/groups`, { method: "POST", headers: { authorization: `Bearer ${ta}`, "content-type": contentType }, body });
      return { status: res.status, body: (await res.json()) as Json };
    };
    const refusals: [string, { status: number; body: Json }, number, string][] = [
      ["not JSON", await raw("{name:"), 400, "bad_body"],
      ["an array", await raw("[]"), 400, "bad_body"],
      ["no name", await raw(JSON.stringify({ members: [bob] })), 400, "bad_name"],
      ["a blank name", await raw(JSON.stringify({ name: "   " })), 400, "bad_name"],
      ["a name of 101 characters", await raw(JSON.stringify({ name: "é".repeat(101) })), 400, "bad_name"],
      ["a name with a control character", await raw(JSON.stringify({ name: "a\u001b[31mb" })), 400, "bad_name"],
      ["members not an array", await raw(JSON.stringify({ name: "x", members: bob })), 400, "bad_members"],
      ["a member that is no username", await raw(JSON.stringify({ name: "x", members: [bob, "a b"] })), 400, "bad_username"],
      ["a reserved name as member", await raw(JSON.stringify({ name: "x", members: ["groups"] })), 400, "bad_username"],
      ["a body over 2 MiB", await raw(JSON.stringify({ name: "x", members: Array.from({ length: 20_000 }, (_, i) => `${"u".repeat(100)}${i}`) })), 413, "body_too_large"],
    ];
    for (const [what, got, status, error] of refusals) {
      expect(got.status, what).toBe(status);
      expect(got.body.error, what).toBe(error);
    }
    // Nothing was created: bob, named in some of them, has no group.
    expect((await conversations(http0, tb)).filter((c: Json) => c.kind === "group")).toEqual([]);
    expect((await conversations(http0, ta)).filter((c: Json) => c.kind === "group")).toEqual([]);
    // A valid one still works after all that.
    expect((await apiSend(http0, "POST", "/api/groups", ta, { name: "fine", members: [bob] })).status).toBe(201);
  });
});
