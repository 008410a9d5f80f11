import { describe, expect, it } from "vitest";
import { connectReady, freshPrefix, messagesBetween, startGateway, startWorker, tokenFor, uniqueUser, waitFor } from "./helpers/index.js";

describe("cross-node delivery", () => {
  it("delivers a message to both users' chat sockets on two nodes, with every field, and persists it once", async () => {
    const prefix = freshPrefix("delivery");
    const [g1, g2] = await Promise.all([startGateway(prefix), startGateway(prefix)]);
    await startWorker(prefix);
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const a = await connectReady(g1.url, `/ws/${bob}/`, await tokenFor(alice));
    const b = await connectReady(g2.url, `/ws/${alice}`, await tokenFor(bob));

    a.send({ type: "chat_message", message: "hello bob", client_id: "c-1" });
    const atA = await a.next("chat_message");
    const atB = await b.next("chat_message");
    expect(atB).toEqual(atA);
    expect(atA).toMatchObject({
      message: "hello bob",
      multimedia_url: null,
      from_user: { username: alice },
      to_user: { username: bob },
      room: bob,
      client_id: "c-1",
    });
    expect(atA["id"]).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7/);
    expect(Date.parse(String(atA["date_added"]))).toBeGreaterThan(Date.now() - 60_000);

    b.send({ type: "chat_message", message: "", multimedia_url: "https://cdn.example/x.png" });
    const media = await a.next("chat_message");
    expect(media).toMatchObject({ message: "", multimedia_url: "https://cdn.example/x.png", from_user: { username: bob }, room: alice });
    expect(media).not.toHaveProperty("client_id");

    const rows = await waitFor(async () => {
      const r = await messagesBetween(alice, bob);
      expect(r).toHaveLength(2);
      return r;
    });
    expect(rows.map((r) => r.id)).toEqual([atA["id"], media["id"]]);
    expect(a.schemaViolations).toEqual([]);
    expect(b.schemaViolations).toEqual([]);
  });

  it("shows every socket of a conversation the same order when both users send at once from different nodes", async () => {
    const prefix = freshPrefix("order");
    const [g1, g2] = await Promise.all([startGateway(prefix), startGateway(prefix)]);
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);
    const sockets = await Promise.all([
      connectReady(g1.url, `/ws/${bob}/`, ta),
      connectReady(g2.url, `/ws/${bob}/`, ta),
      connectReady(g2.url, `/ws/${alice}/`, tb),
      connectReady(g1.url, `/ws/${alice}/`, tb),
    ]);
    const perSender = 50;
    for (let i = 0; i < perSender; i++) {
      sockets[0]!.send({ type: "chat_message", message: `a${i}` });
      sockets[2]!.send({ type: "chat_message", message: `b${i}` });
    }
    for (const s of sockets) await s.until((f) => f.filter((x) => x.type === "chat_message").length === 2 * perSender, 10000, "all messages");
    const orders = sockets.map((s) => s.ofType("chat_message").map((f) => f["message"]));
    for (const o of orders) expect(o).toEqual(orders[0]);
    // Each sender's own messages keep the order it sent them in.
    expect(orders[0]!.filter((m) => String(m).startsWith("a"))).toEqual(Array.from({ length: perSender }, (_, i) => `a${i}`));
  });

  it("does not leak a conversation's messages to a third user's sockets", async () => {
    const prefix = freshPrefix("isolation");
    const g = await startGateway(prefix);
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const carol = uniqueUser("carol");
    const a = await connectReady(g.url, `/ws/${bob}/`, await tokenFor(alice));
    const c = await connectReady(g.url, `/ws/${alice}/`, await tokenFor(carol));
    a.send({ type: "chat_message", message: "for bob only" });
    await a.next("chat_message");
    c.send({ type: "chat_message", message: "carol to alice" });
    await c.next("chat_message");
    expect(c.ofType("chat_message").map((f) => f["message"])).toEqual(["carol to alice"]);
  });
});
