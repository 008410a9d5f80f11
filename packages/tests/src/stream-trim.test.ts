import { describe, expect, it } from "vitest";
import { MessageStream, redisNames } from "@chat/bus";
import { freshPrefix, testRedis } from "./helpers/index.js";

describe("stream trimming", () => {
  it("deletes acknowledged entries only, never a pending or undelivered one", async () => {
    const redis = testRedis();
    const names = redisNames(freshPrefix("trim"));
    const stream = new MessageStream(redis, names);
    await stream.ensureGroup();
    for (let i = 0; i < 10; i++) await stream.append({ kind: "read", reader: `r${i}`, other: "o" });
    const batch = await stream.read("c1", 6, 100);
    expect(batch).toHaveLength(6);
    // Acknowledge all but the third: entries from the third on must stay.
    await stream.ack(batch.filter((_, i) => i !== 2).map((e) => e.streamId));
    await stream.trimAcknowledged();
    const left = (await redis.xrange(names.stream, "-", "+")).map(([id]) => id);
    expect(left[0]).toBe(batch[2]!.streamId);
    expect(left).toHaveLength(8);

    await stream.ack([batch[2]!.streamId]);
    await stream.trimAcknowledged();
    // The four never-delivered entries remain.
    expect(await redis.xlen(names.stream)).toBe(4);
    const rest = await stream.read("c1", 10, 100);
    expect(rest.map((e) => e.entry)).toEqual([6, 7, 8, 9].map((i) => ({ kind: "read", reader: `r${i}`, other: "o" })));
    await stream.ack(rest.map((e) => e.streamId));
    await stream.trimAcknowledged();
    expect(await redis.xlen(names.stream)).toBe(0);
    await redis.del(names.stream);
  });
});
