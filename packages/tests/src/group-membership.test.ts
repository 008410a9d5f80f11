import { describe, expect, it } from "vitest";
import { groupConversation } from "@chat/bus";
import { connect, connectReady, freshPrefix, startGateway, testSql, tokenFor, uniqueUser, type TestClient } from "./helpers/index.js";

const httpOf = (wsUrl: string) => wsUrl.replace(/^ws:/, "http:");

const closedWith = async (c: TestClient, code: number, what: string) => {
  await c.until(() => c.closeCode !== null, 10_000, what);
  expect(c.closeCode, what).toBe(code);
};

/**
 * A removal closes the member's group sockets over pub/sub, at most once: a Redis failover can lose
 * that close. The gateways read the membership of their group sockets again every
 * CHAT_GROUP_MEMBERSHIP_RECHECK_MS, and a send reads it again after 10 s. Here the membership row is
 * deleted in Postgres directly, so no close is ever published: what closes the sockets is the re-check.
 */
describe("group membership re-check", () => {
  it("closes with 4003 the group sockets of a member whose removal's close never came, and only theirs", async () => {
    const prefix = freshPrefix("group-recheck");
    const g = await startGateway(prefix, { CHAT_GROUP_MEMBERSHIP_RECHECK_MS: "300" });
    const [alice, carol] = [uniqueUser("alice"), uniqueUser("carol")];
    const [ta, tc] = await Promise.all([tokenFor(alice), tokenFor(carol)]);
    const created = await fetch(`${httpOf(g.url)}/api/groups`, {
      method: "POST",
      headers: { authorization: `Bearer ${ta}`, "content-type": "application/json" },
      body: JSON.stringify({ name: "quiet removal", members: [carol] }),
    });
    expect(created.status).toBe(201);
    const id = ((await created.json()) as { id: string }).id;
    const a = await connectReady(g.url, `/ws/groups/${id}/`, ta);
    const c = await connectReady(g.url, `/ws/groups/${id}/`, tc);
    const cNotes = await connectReady(g.url, `/ws/notifications/groups/${id}/`, tc);
    const cAll = await connectReady(g.url, "/ws/notifications/", tc);

    await testSql()`DELETE FROM conversation_members WHERE username = ${carol} AND other_username = ${groupConversation(id)}`;
    await closedWith(c, 4003, "carol's chat socket");
    await closedWith(cNotes, 4003, "carol's group notifications socket");
    // A new socket is refused from the start.
    const again = await connect(g.url, `/ws/groups/${id}/`, tc);
    await closedWith(again, 4004, "carol's new socket");
    expect(again.frames).toEqual([]);
    // It was the re-check (nothing was published), and alice's socket and carol's other one stay.
    expect(g.logs.some((l) => l["msg"] === "group sockets of removed members closed by the membership re-check")).toBe(true);
    a.send({ type: "chat_message", message: "still here", client_id: "s" });
    expect((await a.next("chat_message", 5000))["message"]).toBe("still here");
    expect(a.closeCode).toBeNull();
    expect(cAll.closeCode).toBeNull();
  });
});
