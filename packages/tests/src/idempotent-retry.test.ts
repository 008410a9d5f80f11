import { describe, expect, it, onTestFinished } from "vitest";
import { redisNames } from "@chat/bus";
import {
  connectReady,
  freshPrefix,
  startGateway,
  startWorker,
  testRedis,
  testSql,
  tokenFor,
  uniqueUser,
  waitFor,
  type Frame,
  type TestClient,
} from "./helpers/index.js";
import { allLogEntries, conversationStream, dropPrefixAtEnd } from "./helpers/redis.js";

// Register the pool's and the Redis connection's teardown at file level (first used inside a test).
testSql();
testRedis();

const NO_RATE_LIMIT = { CHAT_RATE_MESSAGES_PER_SECOND: "0" };

const echoes = (c: TestClient, clientId: string): Frame[] => c.ofType("chat_message").filter((f) => f["client_id"] === clientId);

async function rowsFrom(from: string, to: string) {
  const sql = testSql();
  return sql<{ id: string; content: string; client_id: string | null }[]>`
    SELECT id::text AS id, content, client_id FROM messages WHERE from_user = ${from} AND to_user = ${to} ORDER BY stream_position`;
}

describe("idempotent sends (client_id)", () => {
  it("a retry after a reconnect, to the other gateway, gets the original chat_message and stores nothing new", async () => {
    const prefix = freshPrefix("retry");
    dropPrefixAtEnd(prefix);
    const [g1, g2] = await Promise.all([startGateway(prefix), startGateway(prefix)]);
    await startWorker(prefix);
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);
    const b = await connectReady(g2.url, `/ws/${alice}/`, tb);

    const first = await connectReady(g1.url, `/ws/${bob}/`, ta);
    first.send({ type: "chat_message", message: "hello", client_id: "c-1" });
    const original = await first.next("chat_message");
    expect(original).toMatchObject({ message: "hello", client_id: "c-1", from_user: { username: alice } });
    // The client did not see the echo in time (say), reconnects to the other node and sends again.
    await first.close();
    const second = await connectReady(g2.url, `/ws/${bob}/`, ta);
    second.send({ type: "chat_message", message: "hello", client_id: "c-1" });
    expect(await second.next("chat_message")).toEqual(original);
    // A retry whose text changed is still the same send: the original comes back.
    second.send({ type: "chat_message", message: "hello (edited before the retry)", client_id: "c-1" });
    expect(await second.next("chat_message")).toEqual(original);
    // And a retry on the same socket, without a reconnect.
    second.send({ type: "chat_message", message: "hello", client_id: "c-1" });
    expect(await second.next("chat_message")).toEqual(original);

    // A fresh client_id is a new message; bob saw the first one once, then this one.
    second.send({ type: "chat_message", message: "next", client_id: "c-2" });
    const next = await second.next("chat_message");
    expect(next).toMatchObject({ message: "next", client_id: "c-2" });
    expect(next["id"]).not.toBe(original["id"]);
    await b.until((f) => f.some((x) => x.type === "chat_message" && x["client_id"] === "c-2"), 5000, "c-2 on bob's socket");
    expect(b.ofType("chat_message").map((f) => f["id"])).toEqual([original["id"], next["id"]]);

    // Postgres holds one message per client_id, the original's.
    await waitFor(async () => expect(await rowsFrom(alice, bob)).toHaveLength(2));
    expect(await rowsFrom(alice, bob)).toEqual([
      { id: original["id"], content: "hello", client_id: "c-1" },
      { id: next["id"], content: "next", client_id: "c-2" },
    ]);
    for (const c of [first, second, b]) {
      expect(c.ofType("error")).toEqual([]);
      expect(c.schemaViolations).toEqual([]);
    }
  });

  it("different users may use the same client_id independently", async () => {
    const prefix = freshPrefix("retry-users");
    dropPrefixAtEnd(prefix);
    const [g1, g2] = await Promise.all([startGateway(prefix), startGateway(prefix)]);
    await startWorker(prefix);
    const alice = uniqueUser("alice");
    const carol = uniqueUser("carol");
    const bob = uniqueUser("bob");
    const a = await connectReady(g1.url, `/ws/${bob}/`, await tokenFor(alice));
    const c = await connectReady(g2.url, `/ws/${bob}/`, await tokenFor(carol));
    // bob sends with the same client_id to both as well.
    const ba = await connectReady(g2.url, `/ws/${alice}/`, await tokenFor(bob));
    a.send({ type: "chat_message", message: "from alice", client_id: "same" });
    c.send({ type: "chat_message", message: "from carol", client_id: "same" });
    const fromAlice = await a.next("chat_message");
    const fromCarol = await c.next("chat_message");
    ba.send({ type: "chat_message", message: "from bob", client_id: "same" });
    await ba.until((f) => f.filter((x) => x.type === "chat_message").length === 2, 5000, "alice's message and bob's echo");
    const fromBob = ba.ofType("chat_message").find((f) => f["message"] === "from bob");
    expect(fromAlice).toMatchObject({ message: "from alice", client_id: "same", from_user: { username: alice } });
    expect(fromCarol).toMatchObject({ message: "from carol", client_id: "same", from_user: { username: carol } });
    expect(fromBob).toMatchObject({ message: "from bob", client_id: "same", from_user: { username: bob } });
    expect(new Set([fromAlice["id"], fromCarol["id"], fromBob!["id"]]).size).toBe(3);

    await waitFor(async () => {
      expect(await rowsFrom(alice, bob)).toEqual([{ id: fromAlice["id"], content: "from alice", client_id: "same" }]);
      expect(await rowsFrom(carol, bob)).toEqual([{ id: fromCarol["id"], content: "from carol", client_id: "same" }]);
      expect(await rowsFrom(bob, alice)).toEqual([{ id: fromBob!["id"], content: "from bob", client_id: "same" }]);
    });
    for (const s of [a, c, ba]) expect(s.ofType("error")).toEqual([]);
  });

  it("the same client_id sent at once on two sockets of one user, on two nodes, creates one message", async () => {
    const prefix = freshPrefix("retry-race");
    dropPrefixAtEnd(prefix);
    const [g1, g2] = await Promise.all([startGateway(prefix, NO_RATE_LIMIT), startGateway(prefix, NO_RATE_LIMIT)]);
    // No trimming during the test: the stream is inspected below.
    await startWorker(prefix, { CHAT_WORKER_TRIM_INTERVAL_MS: "600000" });
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const ta = await tokenFor(alice);
    const a1 = await connectReady(g1.url, `/ws/${bob}/`, ta);
    const a2 = await connectReady(g2.url, `/ws/${bob}/`, ta);
    const b = await connectReady(g1.url, `/ws/${alice}/`, await tokenFor(bob));

    // 100 client_ids, each sent on both sockets in the same tick.
    const n = 100;
    for (let k = 0; k < n; k++) {
      a1.send({ type: "chat_message", message: `m${k}`, client_id: `dup-${k}` });
      a2.send({ type: "chat_message", message: `m${k}`, client_id: `dup-${k}` });
    }
    // Each socket: the live message once, plus the original again for its own duplicate when the
    // other socket's copy won. Either way, one id per client_id.
    for (const s of [a1, a2]) {
      await s.until(() => Array.from({ length: n }, (_, k) => echoes(s, `dup-${k}`).length).every((x) => x >= 1), 10000, "an echo of every send");
    }
    await b.until((f) => f.filter((x) => x.type === "chat_message").length >= n, 10000, "every message on bob's socket");
    // The losing copy of each pair is answered with the original on its own socket: n live messages
    // on each of the two sockets, plus n answers to the duplicates.
    const copies = () => a1.ofType("chat_message").length + a2.ofType("chat_message").length;
    await waitFor(() => copies() >= 3 * n, 10000).catch(() => undefined);
    expect(copies()).toBe(3 * n);
    const idOf = new Map<string, string>();
    for (let k = 0; k < n; k++) {
      const seen = new Set([...echoes(a1, `dup-${k}`), ...echoes(a2, `dup-${k}`), ...echoes(b, `dup-${k}`)].map((f) => String(f["id"])));
      expect(seen.size, `ids seen for dup-${k}`).toBe(1);
      expect(echoes(b, `dup-${k}`), `bob's copies of dup-${k}`).toHaveLength(1);
      idOf.set(`dup-${k}`, [...seen][0]!);
    }

    // The log (every partition) got one entry per client_id, and once the worker is through the
    // conversation's partition, Postgres one row each.
    const names = redisNames(prefix);
    const inStream = (await allLogEntries(testRedis(), names)).map(([, f]) => (JSON.parse(f[1]!) as { client_id?: string }).client_id);
    expect(inStream.filter((id) => id?.startsWith("dup-")).sort()).toEqual([...idOf.keys()].sort());
    await waitFor(async () => {
      const pending = (await testRedis().xpending(conversationStream(names, alice, bob), names.group)) as [number];
      expect(pending[0]).toBe(0);
      expect(await rowsFrom(alice, bob)).toHaveLength(n);
    }, 10000);
    const rows = await rowsFrom(alice, bob);
    expect(new Map(rows.map((r) => [r.client_id, r.id]))).toEqual(idOf);
    for (const s of [a1, a2, b]) {
      expect(s.ofType("error")).toEqual([]);
      expect(s.schemaViolations).toEqual([]);
    }
  });
});
