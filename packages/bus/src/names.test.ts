import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { Cluster, Redis, type Command } from "ioredis";
import { afterAll, describe, expect, it } from "vitest";
import { encodeEnvelope } from "./envelope.js";
import { checkPartitionCount, PartitionCountMismatchError, RedisMessageLog } from "./message-log-redis.js";
import { redisNames } from "./names.js";
import { CLUSTER_SLOTS, partitionOf, partitionTags, slotOf } from "./partitions.js";
import { RedisPresence } from "./presence-redis.js";
import { RedisConnectionLimit } from "./connection-limit-redis.js";
import { RedisRateLimiter, withTokenBucket } from "./rate-limit-redis.js";

describe("partitions", () => {
  it("puts partition i's tag in the i-th of N equal slot ranges, for every N", () => {
    for (const n of [1, 2, 3, 16, 100, 1024]) {
      const tags = partitionTags(n);
      expect(tags).toHaveLength(n);
      tags.forEach((tag, i) => {
        const slot = slotOf(`{${tag}}`);
        expect(slot).toBeGreaterThanOrEqual(Math.floor((i * CLUSTER_SLOTS) / n));
        expect(slot).toBeLessThan(Math.floor(((i + 1) * CLUSTER_SLOTS) / n));
      });
    }
  });

  it("spreads 16 partitions 6/5/5 over the slot ranges of 3 equal masters", () => {
    const perMaster = [0, 0, 0];
    for (const tag of partitionTags(16)) perMaster[Math.min(2, Math.floor(slotOf(tag) / (CLUSTER_SLOTS / 3)))]!++;
    expect(perMaster.sort()).toEqual([5, 5, 6]);
  });

  it("maps a conversation to a stable partition (FNV-1a), spread evenly", () => {
    // Fixed values (FNV-1a computed elsewhere): every gateway and worker of every version must agree on them.
    expect(partitionOf("alice:bob", 16)).toBe(partitionOf("alice:bob", 16));
    expect([partitionOf("", 16), partitionOf("alice:bob", 16), partitionOf("alice:bob", 7)]).toEqual([0x811c9dc5 % 16, 6, 3]);
    const counts = new Array<number>(16).fill(0);
    for (let i = 0; i < 16_000; i++) counts[partitionOf(`user${i}:other${i * 7}`, 16)]!++;
    for (const c of counts) expect(c).toBeGreaterThan(850);
  });
});

describe("names", () => {
  it("names a conversation the same whoever addresses whom, under the prefix", () => {
    const n = redisNames("p:");
    expect(n.roomId("bob", "alice")).toBe(n.roomId("alice", "bob"));
    const room = n.roomId("bob", "alice");
    expect(n.roomChannel(room)).toBe(`p:{${partitionTags(16)[n.partitionOf(room)]}}:room:alice:bob`);
    expect(n.userChannel("alice")).toBe("p:{u:alice}:user");
    const all = [n.workers, n.partitionsKey, n.stream(3), n.deadLetterStream(3), n.presenceIndex(3), n.partitionLease(3), n.rateBucket("a"), n.userConnections("a")];
    for (const name of all) expect(name.startsWith("p:")).toBe(true);
  });

  it("keeps everything of one conversation in its partition's slot, and everything of one user in the user's", () => {
    const n = redisNames("chat:", 16);
    for (let i = 0; i < 200; i++) {
      const [a, b] = [`u${i}`, `v${i * 13}`];
      const room = n.roomId(a, b);
      const slot = slotOf(n.stream(n.partitionOf(room)));
      for (const key of [n.roomChannel(room), n.presenceRoom(room), n.presenceIndex(n.partitionOf(room)), n.clientMessage(a, b, "c1"), n.clientMessage(b, a, "c2"), n.deadLetterStream(n.partitionOf(room)), n.partitionLease(n.partitionOf(room))]) {
        expect(slotOf(key), key).toBe(slot);
      }
      const user = slotOf(n.userChannel(a));
      for (const key of [n.rateBucket(a), n.userConnections(a)]) expect(slotOf(key), key).toBe(user);
    }
  });
});

/**
 * Through the real classes on the real Redis: every script call and multi-key command they send,
 * recorded as sent, touches one slot (keys and the channels scripts publish to). On a Redis Cluster
 * anything else fails with CROSSSLOT, so this is what makes one code path work on both.
 */
describe("one slot per script and multi-key command", () => {
  const redis = new Redis(process.env["REDIS_URL"] ?? "redis://127.0.0.1:6379", { lazyConnect: true });
  afterAll(() => redis.quit());
  const sent: { name: string; args: string[] }[] = [];
  const original = redis.sendCommand.bind(redis);
  redis.sendCommand = (command: Command, ...rest: unknown[]) => {
    sent.push({ name: command.name.toLowerCase(), args: command.args.map((a) => String(a)) });
    return (original as (c: Command, ...r: unknown[]) => unknown)(command, ...rest);
  };

  const acceptSha = createHash("sha1").update(withTokenBucket(readFileSync(new URL("./lua/accept.lua", import.meta.url), "utf8"))).digest("hex");
  const shaOf = (file: string) => createHash("sha1").update(readFileSync(new URL(`./lua/${file}`, import.meta.url), "utf8")).digest("hex");
  /** Scripts that publish, and which of their ARGV is the channel. */
  const channelArg = new Map([
    [acceptSha, 1],
    [shaOf("connections-acquire.lua"), 3],
    [shaOf("connections-release.lua"), 1],
  ]);

  /** The keys of a command as Redis Cluster reads them, and the channels our scripts publish to (accept.lua's ARGV[2]). */
  function slotsOf({ name, args }: { name: string; args: string[] }): Set<number> {
    if (name === "evalsha" || name === "eval") {
      const numKeys = Number(args[1]);
      const keys = args.slice(2, 2 + numKeys);
      const argv = args.slice(2 + numKeys);
      const at = channelArg.get(args[0]!);
      const channels = at !== undefined && argv[at] ? [argv[at]] : [];
      return new Set([...keys, ...channels].map(slotOf));
    }
    if (["xadd", "xrevrange", "xrange", "xreadgroup", "xautoclaim", "xack", "xgroup", "xinfo", "xpending", "xtrim", "zadd", "zrem", "zrangebyscore", "zcount", "get", "set", "spublish"].includes(name)) {
      const key = name === "xreadgroup" ? args[args.indexOf("STREAMS") + 1]! : name === "xgroup" || name === "xinfo" ? args[1]! : args[0]!;
      return new Set([slotOf(key)]);
    }
    throw new Error(`no slot rule for ${name} ${args.join(" ")}`);
  }

  it("holds for accept, presence, rate limits, connection counts and the consumer side", async () => {
    const prefix = `t-slots-${process.pid}-${Date.now()}:`;
    const names = redisNames(prefix, 16);
    const log = new RedisMessageLog(redis, names, { idempotencyTtlSeconds: 60 });
    const presence = new RedisPresence(redis, names, 5000);
    const limit = new RedisConnectionLimit(redis, names, 5, 5000, "n");
    const rate = new RedisRateLimiter(redis, names, 10, 20);
    try {
      await checkPartitionCount(redis, names);
      const users = Array.from({ length: 12 }, (_, i) => `slot${i}`);
      const entries = [];
      for (let i = 0; i < users.length; i++) {
        const [from, to] = [users[i]!, users[(i + 5) % users.length]!];
        const room = names.roomId(from, to);
        const frame = JSON.stringify({ type: "chat_message", id: `m${i}` });
        await rate.take(from);
        await log.accept({
          conversation: room,
          clientId: `c${i}`,
          entry: { kind: "message", id: `00000000-0000-7000-8000-${String(i).padStart(12, "0")}`, from, to, message: "hi", multimedia_url: null, date_added: new Date().toISOString(), client_id: `c${i}` },
          live: { frame, envelope: encodeEnvelope("n", "*", [frame]) },
        });
        await log.accept({ conversation: room, entry: { kind: "read", reader: to, other: from } });
        const entry = { roomId: room, user: from, member: `${from}|n:${i}` };
        entries.push(entry);
        await presence.join(entry);
        const counted = await limit.acquire(from, `${from}|n:${i}`);
        expect(await limit.online([from, to])).toContain(from);
        if (i % 2 === 0 && counted) await limit.release(counted);
        await log.findMessage(room, "00000000-0000-7000-8000-000000000000", { fromMs: 0, toMs: Date.now(), maxEntries: 10 });
        await log.rangeBetween(room, "-", null, 10);
      }
      await presence.refresh(entries);
      await limit.refresh(users.map((u, i) => ({ key: names.userConnections(u), member: `${u}|n:${i}`, username: u })));
      for (let p = 0; p < names.partitions; p++) {
        const part = log.partition(p);
        await part.ensureGroup();
        const read = await part.read("w", 100, null);
        await part.claim("w", 0, 100);
        await part.ack(read.map((r) => r.streamId));
        await part.trimAcknowledged();
        await part.backlog();
      }
      for (const entry of entries.slice(0, 6)) await presence.leave(entry);
      await presence.sweepExpired();

      const scripts = sent.filter((c) => c.name === "evalsha" || c.name === "eval");
      expect(scripts.length).toBeGreaterThan(50);
      for (const command of sent) {
        if (["info", "script", "ping", "client", "select", "quit"].includes(command.name)) continue;
        expect([...slotsOf(command)], `${command.name} ${command.args.slice(0, 4).join(" ")}`).toHaveLength(1);
      }
    } finally {
      const keys = await redis.keys(`${prefix}*`);
      if (keys.length > 0) await redis.del(...keys);
    }
  });

  it("on a single Redis only, takes the sender's token inside accept: the partition's slot and the sender's", async () => {
    const prefix = `t-rate-accept-${process.pid}-${Date.now()}:`;
    const names = redisNames(prefix, 16);
    const log = new RedisMessageLog(redis, names, { idempotencyTtlSeconds: 60, rate: { perSecond: 1, burst: 2 } });
    const [from, to] = ["rate-a", "rate-b"];
    const room = names.roomId(from, to);
    const message = (i: number) => {
      const frame = JSON.stringify({ type: "chat_message", id: `r${i}` });
      return {
        conversation: room,
        clientId: `c${i}`,
        entry: { kind: "message" as const, id: `00000000-0000-7000-8000-${String(i).padStart(12, "0")}`, from, to, message: "hi", multimedia_url: null, date_added: new Date().toISOString(), client_id: `c${i}` },
        live: { frame, envelope: encodeEnvelope("n", "*", [frame]) },
      };
    };
    try {
      const before = sent.length;
      const results = [];
      for (let i = 0; i < 3; i++) results.push(await log.accept(message(i)));
      // The other user's read takes from the other user's bucket.
      results.push(await log.accept({ conversation: room, entry: { kind: "read", reader: to, other: from } }));
      expect(results.map((r) => r.kind)).toEqual(["accepted", "accepted", "rate_limited", "accepted"]);
      const refused = results[2] as { retryAfterMs: number };
      expect(refused.retryAfterMs).toBeGreaterThan(0);
      expect(refused.retryAfterMs).toBeLessThanOrEqual(1000);
      // A refused send stored nothing, and its client_id is free for the retry.
      expect(await redis.xlen(names.stream(names.partitionOf(room)))).toBe(3);
      expect(await redis.exists(names.clientMessage(from, to, "c2"))).toBe(0);

      const accepts = sent.slice(before).filter((c) => c.name === "evalsha" && c.args[0] === acceptSha);
      expect(accepts).toHaveLength(4);
      const partition = slotOf(names.stream(names.partitionOf(room)));
      expect([...slotsOf(accepts[0]!)].sort()).toEqual([partition, slotOf(names.rateBucket(from))].sort());
      expect([...slotsOf(accepts[3]!)].sort()).toEqual([partition, slotOf(names.rateBucket(to))].sort());
    } finally {
      const keys = await redis.keys(`${prefix}*`);
      if (keys.length > 0) await redis.del(...keys);
    }
    // Two slots in one script is a CROSSSLOT error on a cluster: the option is refused there.
    const cluster = new Cluster([{ host: "127.0.0.1", port: 1 }], { lazyConnect: true });
    expect(() => new RedisMessageLog(cluster, names, { idempotencyTtlSeconds: 60, rate: { perSecond: 1, burst: 2 } })).toThrow(/single Redis/);
    // The same for reading many partitions' streams in one XREADGROUP: a cluster reads them one by one.
    expect(new RedisMessageLog(cluster, names, { idempotencyTtlSeconds: 60, openPartitionClient: () => cluster }).openMultiReader()).toBeUndefined();
    cluster.disconnect();
  });

  it("records the partition count on first start and refuses another", async () => {
    const prefix = `t-partitions-${process.pid}-${Date.now()}:`;
    try {
      await checkPartitionCount(redis, redisNames(prefix, 8));
      await checkPartitionCount(redis, redisNames(prefix, 8));
      const refused = checkPartitionCount(redis, redisNames(prefix, 16));
      await expect(refused).rejects.toThrow(PartitionCountMismatchError);
      await expect(refused).rejects.toThrow(/CHAT_PARTITIONS is 16, but this deployment .* was started with 8: set CHAT_PARTITIONS=8/);
    } finally {
      await redis.del(redisNames(prefix).partitionsKey);
    }
  });
});
