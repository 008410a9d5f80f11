import { randomBytes } from "node:crypto";
import { redisNames } from "@chat/bus";
import { describe, expect, it } from "vitest";
import {
  connectReady,
  dropPrefixAtEnd,
  freshPrefix,
  leaseOwners,
  persistedFrom,
  startGateway,
  startWorker,
  testRedis,
  tokenFor,
  uniqueUser,
  userWhose,
  waitFor,
  waitForLeaseShares,
} from "./helpers/index.js";

// On a single Redis a worker reads every partition it owns with one XREADGROUP on one connection
// (MultiPartitionConsumer), instead of a blocked connection and a read per partition. Its reads block
// for up to CHAT_WORKER_BLOCK_MS; here that is a minute, so a worker that only noticed partitions
// added or given back when a read returned would hold a handover, and the messages behind it, for a
// minute: the test would time out long before.

const SLOW_READS = {
  CHAT_WORKER_BLOCK_MS: "60000",
  // Claims also end a read's wait (the next claim is due): a minute too.
  CHAT_WORKER_CLAIM_INTERVAL_MS: "60000",
};

/** The worker's connections to Redis by the role in their name (`<worker>:<role>`). */
async function connectionsOf(worker: string): Promise<Record<string, number>> {
  const list = (await testRedis().client("LIST")) as string;
  const roles: Record<string, number> = {};
  for (const line of list.split("\n")) {
    const name = /\bname=(\S*)/.exec(line)?.[1] ?? "";
    if (!name.startsWith(`${worker}:`)) continue;
    const role = name.slice(worker.length + 1);
    roles[role] = (roles[role] ?? 0) + 1;
  }
  return roles;
}

describe("a worker on a single Redis", () => {
  it("reads all its partitions on one blocking connection, and takes partitions on and gives them back without waiting out a read", { timeout: 60_000 }, async () => {
    const prefix = freshPrefix("reads");
    dropPrefixAtEnd(prefix);
    const names = redisNames(prefix);
    const [first, second] = [`reads-a-${randomBytes(3).toString("hex")}`, `reads-b-${randomBytes(3).toString("hex")}`];
    const gateway = await startGateway(prefix, { CHAT_RATE_MESSAGES_PER_SECOND: "0" });
    const firstWorker = await startWorker(prefix, { ...SLOW_READS, CHAT_WORKER_NAME: first });
    await waitForLeaseShares(testRedis(), names, 1);
    // Its first blocking read has started once its connection for reads exists.
    await waitFor(async () => expect(await connectionsOf(first)).toEqual({ worker: 1, partition: 1 }));

    // A second worker joins: the first gives half its partitions back while its read blocks, the
    // second takes them while its own read blocks on the first it got.
    await startWorker(prefix, { ...SLOW_READS, CHAT_WORKER_NAME: second });
    const owners = await waitFor(async () => {
      const now = await leaseOwners(testRedis(), names);
      expect([now.filter((o) => o === first).length, now.filter((o) => o === second).length]).toEqual([8, 8]);
      return now;
    }, 20_000);
    expect(await connectionsOf(first)).toEqual({ worker: 1, partition: 1 });
    expect(await connectionsOf(second)).toEqual({ worker: 1, partition: 1 });

    // One message in a conversation of every partition: each is persisted by its partition's owner.
    const recipient = uniqueUser("reads-to");
    const senders = Array.from({ length: names.partitions }, (_, p) => userWhose(names, `reads-${p}`, recipient, (q) => q === p));
    const sendTo = async (round: number, partitions: number[]) => {
      for (const sender of partitions.map((p) => senders[p]!)) {
        const chat = await connectReady(gateway.url, `/ws/${recipient}/`, await tokenFor(sender));
        const clientId = `${sender}#${round}`;
        chat.send({ type: "chat_message", message: `round ${round} to partition ${names.partitionOf(names.roomId(sender, recipient))}`, client_id: clientId });
        await chat.until((frames) => frames.some((f) => f.type === "chat_message" && f["client_id"] === clientId), 10_000, `echo of ${clientId}`);
        await chat.close();
      }
    };
    await sendTo(1, senders.map((_, p) => p));
    await waitFor(async () => expect(await persistedFrom(senders)).toBe(senders.length), 20_000);

    // The first worker stops: the second takes its partitions on while its read blocks on its own.
    // Messages only to those: nothing new in the second's own partitions ends that read.
    expect(await firstWorker.stop("SIGTERM")).toBe(0);
    await waitFor(async () => expect(new Set(await leaseOwners(testRedis(), names))).toEqual(new Set([second])), 20_000);
    const takenOver = owners.flatMap((o, p) => (o === first ? [p] : []));
    await sendTo(2, takenOver);
    await waitFor(async () => expect(await persistedFrom(senders)).toBe(senders.length + takenOver.length), 20_000);
  });
});
