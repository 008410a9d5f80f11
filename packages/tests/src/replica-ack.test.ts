import { redisNames, slotOf } from "@chat/bus";
import { Redis } from "ioredis";
import { describe, expect, it, onTestFinished } from "vitest";
import {
  REDIS_CLUSTER_URL,
  connectReady,
  freePort,
  freshPrefix,
  messagesBetween,
  scrape,
  sharedClusterNodes,
  startGateway,
  startPrivateRedis,
  startWorker,
  testSql,
  tokenFor,
  uniqueUser,
  userWhose,
  waitFor,
} from "./helpers/index.js";

testSql();

/** A client of one private Redis, closed at the end of the test. */
function clientOf(port: number): Redis {
  const r = new Redis({ host: "127.0.0.1", port, lazyConnect: true, maxRetriesPerRequest: 1 });
  onTestFinished(() => void r.quit().catch(() => r.disconnect()));
  return r;
}

async function replicaLinked(master: Redis, replica: Redis): Promise<boolean> {
  const [m, r] = await Promise.all([master.info("replication"), replica.info("replication")]);
  return /connected_slaves:1/.test(m) && /master_link_status:up/.test(r);
}

describe("CHAT_REDIS_MIN_REPLICAS_ACK on a single Redis with one replica", () => {
  it("echoes a send once the replica has it; with the replica stopped, answers unavailable after the bound, and a retry gets the original, stored once", async () => {
    const [masterPort, replicaPort] = [await freePort(), await freePort()];
    await startPrivateRedis(masterPort);
    // The replica loads the master's snapshot from the socket, not through a file in the working directory.
    const replicaArgs = ["--save", "", "--appendonly", "no", "--repl-diskless-load", "on-empty-db", "--replicaof", "127.0.0.1", String(masterPort)];
    const replicaProcess = await startPrivateRedis(replicaPort, replicaArgs);
    const master = clientOf(masterPort);
    const replica = clientOf(replicaPort);
    await waitFor(() => replicaLinked(master, replica), 10000);

    const prefix = freshPrefix("replica-ack");
    const names = redisNames(prefix);
    const redisUrl = `redis://127.0.0.1:${masterPort}`;
    const g = await startGateway(prefix, { REDIS_URL: redisUrl, CHAT_REDIS_MIN_REPLICAS_ACK: "1", CHAT_REDIS_REPLICAS_ACK_TIMEOUT_MS: "300" });
    await startWorker(prefix, { REDIS_URL: redisUrl });
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const a = await connectReady(g.url, `/ws/${bob}/`, await tokenFor(alice));
    const b = await connectReady(g.url, `/ws/${alice}/`, await tokenFor(bob));

    // Healthy: the echo comes, and by then the replica holds the message's client_id record.
    a.send({ type: "chat_message", message: "one", client_id: "c-1" });
    expect(await a.next("chat_message")).toMatchObject({ message: "one", client_id: "c-1" });
    expect(await replica.exists(names.clientMessage(alice, bob, "c-1"))).toBe(1);
    expect(await b.next("chat_message")).toMatchObject({ message: "one", client_id: "c-1" });

    // The replica stops answering: the send is in the master's log, but not echoed.
    process.kill(replicaProcess.child.pid!, "SIGSTOP");
    onTestFinished(() => void process.kill(replicaProcess.child.pid!, "SIGCONT"));
    const sentAt = Date.now();
    a.send({ type: "chat_message", message: "two", client_id: "c-2" });
    expect(await a.next("error")).toEqual({ type: "error", code: "unavailable", message: expect.stringContaining("retry with the same client_id"), client_id: "c-2" });
    expect(Date.now() - sentAt).toBeGreaterThanOrEqual(250);
    // The conversation's other socket got it live (the master published it with the append).
    const live = await b.next("chat_message");
    expect(live).toMatchObject({ message: "two", client_id: "c-2" });
    expect(a.ofType("chat_message").map((f) => f["client_id"])).toEqual(["c-1"]);

    // The replica is back: the retry with the same client_id gets the original message, once.
    process.kill(replicaProcess.child.pid!, "SIGCONT");
    await waitFor(() => replicaLinked(master, replica), 10000);
    a.send({ type: "chat_message", message: "two", client_id: "c-2" });
    expect(await a.next("chat_message")).toMatchObject({ id: live["id"], message: "two", client_id: "c-2" });
    expect(a.ofType("chat_message").map((f) => f["client_id"])).toEqual(["c-1", "c-2"]);

    await waitFor(async () => (await messagesBetween(alice, bob)).length === 2, 15000);
    expect((await messagesBetween(alice, bob)).map((m) => m.client_id)).toEqual(["c-1", "c-2"]);
    expect((await scrape(g.port)).value("chat_gateway_sends_unreplicated_total")).toBe(1);
    expect(a.schemaViolations).toEqual([]);
  });
});

/** The pid of the replica of the master serving `slot` in the shared test cluster. */
async function replicaPidForSlot(slot: number): Promise<number> {
  const nodes = await sharedClusterNodes(REDIS_CLUSTER_URL!);
  const master = nodes.find((n) => n.master && n.slots.some(([lo, hi]) => slot >= lo && slot <= hi))!;
  const replica = nodes.find((n) => n.masterId === master.id)!;
  const r = clientOf(replica.port);
  return Number(/process_id:(\d+)/.exec(await r.info("server"))![1]);
}

// On a cluster, each partition's WAIT must go to the master of that partition's slot, on the
// connection that wrote the entries: with one master's replica stopped, only that master's
// conversations are refused, and every conversation is echoed once its replica has it.
describe.runIf(REDIS_CLUSTER_URL !== null)("CHAT_REDIS_MIN_REPLICAS_ACK on the Redis Cluster (3 masters, 1 replica each)", () => {
  it("waits on each conversation's own master: a stopped replica refuses that master's sends only; all are echoed and stored once when it is back", async () => {
    const prefix = freshPrefix("replica-ack-cluster");
    const names = redisNames(prefix);
    const env = { REDIS_URL: REDIS_CLUSTER_URL!, CHAT_REDIS_MIN_REPLICAS_ACK: "1", CHAT_REDIS_REPLICAS_ACK_TIMEOUT_MS: "300" };
    const g = await startGateway(prefix, env);
    await startWorker(prefix, { REDIS_URL: REDIS_CLUSTER_URL! });
    const alice = uniqueUser("alice");
    const token = await tokenFor(alice);
    // Partitions 0, 8 and 15 of 16 lie on the first, second and third master (names.test).
    const partners = [0, 8, 15].map((p) => userWhose(names, "peer", alice, (q) => q === p));
    const sockets = await Promise.all(partners.map((peer) => connectReady(g.url, `/ws/${peer}/`, token)));
    const echoes = (i: number) => sockets[i]!.ofType("chat_message").map((f) => f["client_id"]);
    for (let round = 0; round < 3; round++) {
      sockets.forEach((s, i) => s.send({ type: "chat_message", message: `m${round}`, client_id: `c-${i}-${round}` }));
    }
    for (const [i, s] of sockets.entries()) {
      await s.until((frames) => frames.filter((f) => f.type === "chat_message").length === 3, 10000, "three echoes");
      expect(echoes(i)).toEqual([0, 1, 2].map((r) => `c-${i}-${r}`));
    }

    // The replica of partition 8's master stops (well within the cluster's 2 s node timeout).
    const pid = await replicaPidForSlot(slotOf(names.stream(8)));
    process.kill(pid, "SIGSTOP");
    let stopped = true;
    onTestFinished(() => {
      if (stopped) process.kill(pid, "SIGCONT");
    });
    sockets.forEach((s, i) => s.send({ type: "chat_message", message: "during", client_id: `c-${i}-stop` }));
    expect(await sockets[1]!.next("error")).toMatchObject({ code: "unavailable", client_id: "c-1-stop" });
    for (const i of [0, 2]) await sockets[i]!.until(() => echoes(i).includes(`c-${i}-stop`), 5000, "the other masters' echoes");
    process.kill(pid, "SIGCONT");
    stopped = false;
    expect(echoes(1)).not.toContain("c-1-stop");

    // Back: the retry gets the original, and everything is stored once.
    await waitFor(async () => {
      sockets[1]!.send({ type: "chat_message", message: "during", client_id: "c-1-stop" });
      await sockets[1]!.until(() => echoes(1).includes("c-1-stop") || sockets[1]!.ofType("error").length > 1, 2000, "retry answer");
      return echoes(1).includes("c-1-stop");
    }, 15000, 500);
    for (const [i, peer] of partners.entries()) {
      await waitFor(async () => (await messagesBetween(alice, peer)).length === 4, 15000);
      expect((await messagesBetween(alice, peer)).map((m) => m.client_id).sort()).toEqual([...[0, 1, 2].map((r) => `c-${i}-${r}`), `c-${i}-stop`].sort());
    }
    expect((await scrape(g.port)).value("chat_gateway_sends_unreplicated_total")).toBeGreaterThanOrEqual(1);
  });
});
