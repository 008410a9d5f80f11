import { v7 as uuidv7 } from "uuid";
import { describe, expect, it } from "vitest";
import { RedisMessageLog, redisNames, type StreamEntry } from "@chat/bus";
import { freshPrefix, testRedis } from "./helpers/index.js";

describe("stream trimming", () => {
  it("deletes acknowledged entries only, never a pending or undelivered one", async () => {
    const redis = testRedis();
    const names = redisNames(freshPrefix("trim"));
    const log = new RedisMessageLog(redis, names, { idempotencyTtlSeconds: 60 });
    // One conversation: all its entries go to one partition, which is trimmed on its own.
    const conversation = names.roomId("o", "r");
    const stream = log.partition(log.partitionOf(conversation));
    await stream.ensureGroup();
    const entries: StreamEntry[] = Array.from({ length: 10 }, (_, i) => ({
      kind: "message",
      id: uuidv7(),
      from: "r",
      to: "o",
      message: `m${i}`,
      multimedia_url: null,
      date_added: new Date().toISOString(),
    }));
    for (const entry of entries) await log.append(conversation, entry);
    const batch = await stream.read("c1", 6, 100);
    expect(batch).toHaveLength(6);
    // Acknowledge all but the third: entries from the third on must stay.
    await stream.ack(batch.filter((_, i) => i !== 2).map((e) => e.streamId));
    await stream.trimAcknowledged();
    const left = (await redis.xrange(stream.stream, "-", "+")).map(([id]) => id);
    expect(left[0]).toBe(batch[2]!.streamId);
    expect(left).toHaveLength(8);

    await stream.ack([batch[2]!.streamId]);
    await stream.trimAcknowledged();
    // The four never-delivered entries remain.
    expect(await redis.xlen(stream.stream)).toBe(4);
    const rest = await stream.read("c1", 10, 100);
    expect(rest.map((e) => e.entry)).toEqual(entries.slice(6));
    await stream.ack(rest.map((e) => e.streamId));
    await stream.trimAcknowledged();
    expect(await redis.xlen(stream.stream)).toBe(0);
    await redis.del(stream.stream);
  });
});
