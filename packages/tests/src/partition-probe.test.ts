import { redisNames, slotOf } from "@chat/bus";
import { missingClusterBinaries, startRedisCluster, type LocalRedisCluster } from "@chat/redis-cluster-harness";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connectReady, freshPrefix, scrape, startGateway, startWorker, testSql, tokenFor, uniqueUser, userWhose, waitFor, type TestClient } from "./helpers/index.js";

// A slot moved from one master to another (CLUSTER SETSLOT ... MIGRATING/IMPORTING, MIGRATE, NODE):
// Redis drops the shard subscriptions of that slot on the old master, and the gateway must notice
// (its probe finds the new master serving without its subscription), refuse sends meanwhile, and
// have the chat sockets of that partition catch up. Its own cluster: the shared one keeps its slots.

testSql();

const MISSING = missingClusterBinaries();

/** Moves `slot`, keys and all, from the master on `fromPort` to the one on `toPort`, as redis-cli --cluster reshard does. */
async function moveSlot(ports: number[], slot: number, fromPort: number, toPort: number): Promise<void> {
  const client = (port: number) => new Redis({ host: "127.0.0.1", port, lazyConnect: true, maxRetriesPerRequest: 1 });
  const from = client(fromPort);
  const to = client(toPort);
  const others = ports.map(client);
  try {
    const [fromId, toId] = await Promise.all([from.call("CLUSTER", "MYID"), to.call("CLUSTER", "MYID")]);
    await to.call("CLUSTER", "SETSLOT", slot, "IMPORTING", String(fromId));
    await from.call("CLUSTER", "SETSLOT", slot, "MIGRATING", String(toId));
    for (;;) {
      const keys = (await from.call("CLUSTER", "GETKEYSINSLOT", slot, 100)) as string[];
      if (keys.length === 0) break;
      await from.call("MIGRATE", "127.0.0.1", toPort, "", 0, 5000, "KEYS", ...keys);
    }
    for (const node of [to, from, ...others]) await node.call("CLUSTER", "SETSLOT", slot, "NODE", String(toId));
  } finally {
    for (const c of [from, to, ...others]) c.disconnect();
  }
}

describe.skipIf(MISSING.length > 0)(`partition probe after a slot move${MISSING.length ? ` (skipped: no ${MISSING.join(" or ")} on PATH)` : ""}`, () => {
  let cluster: LocalRedisCluster | undefined;

  beforeAll(async () => {
    cluster = await startRedisCluster({ replicasPerMaster: 0 });
  }, 60_000);

  afterAll(async () => {
    await cluster?.stop();
  });

  it("finds the new master serving the moved partition without the node's subscription, subscribes there, and has that partition's chat sockets catch up with 4002; other partitions carry on", { timeout: 60_000 }, async () => {
    const c = cluster!;
    const prefix = freshPrefix("slot-move");
    const names = redisNames(prefix);
    const env = { REDIS_URL: c.url, CHAT_RATE_MESSAGES_PER_SECOND: "0", CHAT_PARTITION_PROBE_INTERVAL_MS: "200" };
    const g = await startGateway(prefix, env);
    await startWorker(prefix, { REDIS_URL: c.url });

    const alice = uniqueUser("alice");
    const moved = 3;
    const bob = userWhose(names, "bob", alice, (p) => p === moved);
    const carol = userWhose(names, "carol", alice, (p) => p !== moved && p < 6);
    const [ta, tb, tc] = await Promise.all([tokenFor(alice), tokenFor(bob), tokenFor(carol)]);
    const aliceToBob = await connectReady(g.url, `/ws/${bob}/`, ta);
    const bobToAlice = await connectReady(g.url, `/ws/${alice}/`, tb);
    const aliceToCarol = await connectReady(g.url, `/ws/${carol}/`, ta);
    const carolToAlice = await connectReady(g.url, `/ws/${alice}/`, tc);
    aliceToBob.send({ type: "chat_message", message: "before", client_id: "b-0" });
    expect(await bobToAlice.next("chat_message")).toMatchObject({ client_id: "b-0" });

    // Partition 3's slot goes from its master to another one.
    const slot = slotOf(names.stream(moved));
    const masters = await c.masters();
    const owner = (await c.masterOfSlot(slot)).port;
    const target = masters.find((m) => m.port !== owner)!.port;
    await moveSlot(masters.map((m) => m.port), slot, owner, target);
    expect((await c.masterOfSlot(slot)).port).toBe(target);

    // Until the gateway is subscribed there again, sends on that conversation are refused, and the
    // chat sockets of that partition (and only those) are closed with 4002 once it is.
    const closed = (s: TestClient) => s.closeCode !== null;
    await waitFor(() => closed(aliceToBob) && closed(bobToAlice), 15_000, 20);
    expect([aliceToBob.closeCode, bobToAlice.closeCode]).toEqual([4002, 4002]);
    expect(closed(aliceToCarol) || closed(carolToAlice)).toBe(false);
    // How the gateway knew: the new master answered the probe with 0 subscribers.
    expect(g.logs.some((l) => l["partition"] === moved && String(l["msg"]).startsWith("partition's shard serves without this node's subscription"))).toBe(true);
    const refused = [...aliceToBob.ofType("error"), ...bobToAlice.ofType("error")];
    expect(refused.every((e) => e["code"] === "unavailable")).toBe(true);

    // The other partition kept going.
    aliceToCarol.send({ type: "chat_message", message: "meanwhile", client_id: "c-0" });
    expect(await carolToAlice.next("chat_message")).toMatchObject({ client_id: "c-0" });

    // Reconnected with ?since=, the moved conversation works again, live, both ways.
    const since = String(bobToAlice.ofType("chat_message").at(-1)!["id"]);
    const bob2 = await connectReady(g.url, `/ws/${alice}/?since=${since}`, tb);
    const alice2 = await connectReady(g.url, `/ws/${bob}/?since=${since}`, ta);
    alice2.send({ type: "chat_message", message: "after", client_id: "b-1" });
    expect(await bob2.next("chat_message")).toMatchObject({ client_id: "b-1" });
    expect(await alice2.next("chat_message")).toMatchObject({ client_id: "b-1" });
    const m = await scrape(g.port);
    expect(m.value("chat_gateway_resyncs_total")).toBe(2);
    expect(m.value("chat_gateway_partitions_unavailable")).toBe(0);
    for (const s of [aliceToBob, bobToAlice, aliceToCarol, carolToAlice, bob2, alice2]) expect(s.schemaViolations).toEqual([]);
  });
});
