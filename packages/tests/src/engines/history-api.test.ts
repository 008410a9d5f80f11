import { describe, expect, it } from "vitest";
import { connectReady, engines, sharedEngine, tokenFor, uniqueUser, waitFor, type Frame } from "../helpers/index.js";
import { api, asHistoryMessage, asStoredMessage, chatPath, conversations, history, noSchemaViolations, say, type ApiResult, type Json } from "./support.js";

const roomId = (a: string, b: string) => (a < b ? `${a}:${b}` : `${b}:${a}`);

describe.each(engines)("history and conversations over HTTP (%s engine)", (kind) => {
  const shared = sharedEngine(kind);
  it("serves the messages in keyset pages, newest first with before and oldest first with after, as the sockets saw them", async () => {
    const engine = shared();
    const [alice, bob, carol] = [uniqueUser("alice"), uniqueUser("bob"), uniqueUser("carol")];
    const [ta, tb, tc] = await Promise.all([tokenFor(alice), tokenFor(bob), tokenFor(carol)]);
    const a = await connectReady(engine.nodes[0], chatPath(bob), ta);
    const b = await connectReady(engine.nodes[1], chatPath(alice), tb);
    const sent: Frame[] = [];
    for (let i = 0; i < 11; i++) sent.push(await say(i % 3 === 2 ? b : a, `m${i}`));
    sent.push(await say(a, "", { multimedia_url: "https://cdn.example/p.png", client_id: "media-1" }));
    // Without client_id: the history has no client_id field either.
    a.send({ type: "chat_message", message: "no client id" });
    await a.until((f) => f.some((x) => x.type === "chat_message" && x["message"] === "no client id"), 5000, "echo");
    sent.push(a.ofType("chat_message").find((x) => x["message"] === "no client id")!);
    const expected = sent.map(asHistoryMessage).reverse();

    // Persisted shortly after the echo: poll until the whole history is there.
    const [http0, http1] = engine.http;
    await waitFor(async () => expect(await history(http0, bob, ta)).toHaveLength(sent.length), 10000);
    // The order every socket saw is the order of the history (newest first); both users see the same.
    expect(b.ofType("chat_message").map((f) => f["id"])).toEqual(sent.map((f) => f["id"]));
    expect(await history(http0, bob, ta)).toEqual(expected);
    expect(await history(http1, alice, tb)).toEqual(expected);

    // Pages of 5 with before: newest first, next_cursor = the last id of a full page, null at the end.
    const pages: ApiResult[] = [];
    let before: string | null = null;
    do {
      const r: ApiResult = await api(before === null ? http0 : http1, `/api/rooms/${bob}/messages?limit=5${before === null ? "" : `&before=${before}`}`, ta);
      expect(r.status).toBe(200);
      pages.push(r);
      before = r.body.next_cursor;
      expect(pages.length).toBeLessThanOrEqual(4);
    } while (before !== null);
    expect(pages.map((p) => p.body.messages.length)).toEqual([5, 5, 3]);
    expect(pages.flatMap((p) => p.body.messages)).toEqual(expected);
    expect(pages[0]!.body.next_cursor).toBe(expected[4].id);

    // after: oldest first, starting right after the pivot.
    const oldest = [...expected].reverse();
    const after = await api(http1, `/api/rooms/${alice}/messages?after=${oldest[2].id}&limit=4`, tb);
    expect(after.body).toEqual({ messages: oldest.slice(3, 7), next_cursor: oldest[6].id });
    const tail = await api(http0, `/api/rooms/${bob}/messages?after=${oldest.at(-1).id}`, ta);
    expect(tail.body).toEqual({ messages: [], next_cursor: null });

    // Nobody else reads it: carol's history with either of them is empty, and a cursor of theirs is not hers.
    expect(await history(http0, alice, tc)).toEqual([]);
    expect((await api(http0, `/api/rooms/${alice}/messages?before=${expected[0].id}`, tc)).status).toBe(404);
    // No token, no history.
    const anonymous = await api(http1, `/api/rooms/${alice}/messages`, undefined);
    expect(anonymous.status).toBe(401);
    expect(anonymous.body).toEqual({ error: expect.any(String), message: expect.any(String) });
    // Bad parameters.
    expect((await api(http0, `/api/rooms/${bob}/messages?limit=0`, ta)).status).toBe(400);
    expect((await api(http0, `/api/rooms/${bob}/messages?limit=201`, ta)).status).toBe(400);
    expect((await api(http0, `/api/rooms/${alice}/messages`, ta)).status).toBe(400);
    noSchemaViolations(a, b);
  });

  it("lists conversations most recent first with the last message and the exact unread badge, cleared by a read", async () => {
    const engine = shared();
    const [alice, bob, carol, dave] = [uniqueUser("alice"), uniqueUser("bob"), uniqueUser("carol"), uniqueUser("dave")];
    const [ta, tb, tc] = await Promise.all([tokenFor(alice), tokenFor(bob), tokenFor(carol)]);
    const [http0, http1] = engine.http;
    expect(await conversations(http0, ta)).toEqual([]);

    const aToBob = await connectReady(engine.nodes[0], chatPath(bob), ta);
    const aToDave = await connectReady(engine.nodes[1], chatPath(dave), ta);
    const bob1 = await connectReady(engine.nodes[1], chatPath(alice), tb);
    const carol1 = await connectReady(engine.nodes[0], chatPath(alice), tc);

    // The list orders by the last message's date_added (milliseconds), then by username: each send
    // waits for the clock to pass the previous message's millisecond (the embedded engine echoes fast
    // enough for two sends to share one), so "most recent" is unambiguous.
    const last: Record<string, Frame> = {};
    const said = async (socket: typeof bob1, text: string): Promise<Frame> => {
      const frame = await say(socket, text);
      await waitFor(() => expect(Date.now()).toBeGreaterThan(Date.parse(String(frame["date_added"]))), 1000, 1);
      return frame;
    };
    last[bob] = await said(bob1, "bob 1");
    last[bob] = await said(bob1, "bob 2");
    last[carol] = await said(carol1, "carol 1");
    last[dave] = await said(aToDave, "alice to dave");
    last[bob] = await said(bob1, "bob 3");
    const order = [bob, dave, carol];
    const unread: Record<string, number> = { [bob]: 3, [carol]: 1, [dave]: 0 };

    const expectList = async (base: string) => {
      const list = await conversations(base, ta);
      expect(list.map((c: Json) => c.other_user.username)).toEqual(order);
      for (const c of list) {
        const other = c.other_user.username as string;
        expect(c).toEqual({
          kind: "direct",
          id: roomId(alice, other),
          name: roomId(alice, other),
          other_user: { username: other },
          last_message: asStoredMessage(last[other]!),
          unread_count: unread[other],
          // Bob and carol have a socket open; dave never had one.
          online: other !== dave,
        });
      }
    };
    await waitFor(() => expectList(http0), 10000);
    await expectList(http1);

    // Alice reads bob's conversation: the badge goes to 0, the others stay.
    aToBob.send({ type: "read_messages" });
    unread[bob] = 0;
    await waitFor(() => expectList(http1), 10000);

    // Bob and carol see their side: alice sent bob nothing, so nothing unread for him.
    expect(await conversations(http0, tb)).toEqual([
      { kind: "direct", id: roomId(alice, bob), name: roomId(alice, bob), other_user: { username: alice }, last_message: asStoredMessage(last[bob]!), unread_count: 0, online: true },
    ]);
    expect((await conversations(http1, tc)).map((c: Json) => [c.other_user.username, c.unread_count])).toEqual([[alice, 0]]);

    // Pages of one visit every conversation once, in the same order.
    const seen: string[] = [];
    let cursor: string | null = null;
    do {
      const r: ApiResult = await api(http0, `/api/conversations?limit=1${cursor === null ? "" : `&cursor=${encodeURIComponent(cursor)}`}`, ta);
      expect(r.status).toBe(200);
      seen.push(...r.body.conversations.map((c: Json) => c.other_user.username));
      cursor = r.body.next_cursor;
      expect(seen.length).toBeLessThanOrEqual(3);
    } while (cursor !== null);
    expect(seen).toEqual(order);
    expect((await api(http0, "/api/conversations", undefined)).status).toBe(401);
    expect((await api(http0, "/api/conversations?limit=0", ta)).status).toBe(400);
    noSchemaViolations(aToBob, aToDave, bob1, carol1);
  });
  it("refuses malformed cursors and message ids with 400 and unknown well-formed ones with 404, never 500", async () => {
    const engine = shared();
    const [alice, bob] = [uniqueUser("alice"), uniqueUser("bob")];
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);
    const [http0, http1] = engine.http;
    const a = await connectReady(engine.nodes[0], chatPath(bob), ta);
    const sent: Frame[] = [];
    for (let i = 0; i < 3; i++) {
      sent.push(await say(a, `m${i}`));
      await waitFor(() => expect(Date.now()).toBeGreaterThan(Date.parse(String(sent.at(-1)!["date_added"]))), 1000, 1);
    }
    await waitFor(async () => expect(await history(http0, bob, ta)).toHaveLength(3), 10000);
    const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");

    // A cursor this API returned works; then every malformed one is 400 invalid_cursor.
    const first = await api(http0, "/api/conversations?limit=1", tb);
    expect(first.status).toBe(200);
    expect(first.body.next_cursor).toBeNull();
    const ofAlice = await api(http1, "/api/conversations?limit=1", ta);
    expect(ofAlice.status).toBe(200);
    const malformed = [
      "not-a-cursor",
      b64("0"),
      b64(["0", bob]),
      b64(["99999", bob]),
      b64(["+010000-01-01T00:00:00Z", bob]),
      b64(["1", "x"]),
      b64(["2026-02-30 10:00:00+00", bob]),
      b64(["2026-01-01 25:00:00+00", bob]),
      b64(["2026-01-01T00:00:00Z", "no such/user!"]),
      b64(["2026-01-01T00:00:00Z", bob, "extra"]),
      b64([1, 2]),
      b64({ at: "2026-01-01T00:00:00Z", other: bob }),
      Buffer.from("\u0000").toString("base64url"),
    ];
    for (const cursor of malformed) {
      const r = await api(http0, `/api/conversations?cursor=${encodeURIComponent(cursor)}`, ta);
      expect(r.status, `cursor ${Buffer.from(cursor, "base64url").toString()}`).toBe(400);
      expect(r.body).toEqual({ error: "invalid_cursor", message: expect.any(String) });
    }
    // Well-formed cursors of both spellings a client may hold: accepted.
    for (const at of ["2099-01-01T00:00:00.000Z", "2099-01-01 00:00:00.123456+00"]) {
      const r = await api(http1, `/api/conversations?cursor=${b64([at, "zzz"])}`, ta);
      expect(r.status, at).toBe(200);
      expect(r.body.conversations.map((c: Json) => c.other_user.username)).toEqual([bob]);
    }

    // History cursors: not a uuid is 400; a well-formed id that is no message of this conversation is 404.
    for (const q of ["before=abc", "after=abc", `before=${String(sent[0]!["id"])}x`, "after=0190A0A0-0000-7000-8000-00000000000"]) {
      const r = await api(http0, `/api/rooms/${bob}/messages?${q}`, ta);
      expect(r.status, q).toBe(400);
      expect(r.body).toEqual({ error: "invalid_cursor", message: expect.any(String) });
    }
    for (const q of ["before=0190a0a0-0000-7000-8000-000000000000", "after=0190a0a0-0000-7000-8000-000000000000"]) {
      const r = await api(http0, `/api/rooms/${bob}/messages?${q}`, ta);
      expect(r.status, q).toBe(404);
      expect(r.body.error).toBe("cursor_not_found");
    }
    expect((await api(http1, `/api/rooms/${bob}/messages?before=${String(sent[2]!["id"])}`, ta)).body.messages).toHaveLength(2);

    // check-url and refresh-url: a missing or malformed message_id is 400, an unknown one 404.
    for (const endpoint of ["check-url", "refresh-url"]) {
      for (const q of ["", "?message_id=", "?message_id=abc", `?message_id=${String(sent[0]!["id"])}0`]) {
        const r = await api(http0, `/api/rooms/${endpoint}/${q}`, ta);
        expect(r.status, `${endpoint}${q}`).toBe(400);
        expect(r.body).toEqual({ error: "invalid_message_id", message: expect.any(String) });
      }
      const unknown = await api(http1, `/api/rooms/${endpoint}/?message_id=0190a0a0-0000-7000-8000-000000000000`, ta);
      expect(unknown.status, endpoint).toBe(404);
    }
    expect((await api(http0, `/api/rooms/check-url/?message_id=${String(sent[0]!["id"])}`, tb)).body).toEqual({ refresh_url: false });
    noSchemaViolations(a);
  });
});
