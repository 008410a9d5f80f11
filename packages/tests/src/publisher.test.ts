import { Redis } from "ioredis";
import { describe, expect, it, onTestFinished } from "vitest";
import { RedisPublisher } from "@chat/bus";
import { REDIS_URL, freshPrefix, testRedis, waitFor } from "./helpers/index.js";

describe("RedisPublisher", () => {
  it("publishes a batch larger than one script call to every channel, in order, with payloads intact", async () => {
    const prefix = freshPrefix("publish");
    const channels = [`${prefix}a`, `${prefix}b`, `${prefix}c`];
    const subscriber = new Redis(REDIS_URL);
    onTestFinished(() => void subscriber.disconnect());
    const received: [string, string][] = [];
    // The publisher SPUBLISHes: shard channels.
    subscriber.on("smessage", (channel: string, payload: string) => received.push([channel, payload]));
    await subscriber.ssubscribe(...channels);

    // 450 spans three script calls (200 each); payloads with newlines, tabs, quotes and non-ASCII.
    const sent: [string, string][] = Array.from({ length: 450 }, (_, i) => [
      channels[i % 3]!,
      `origin\t*\t${i}\n{"type":"n","text":"ünïcode \\"${i}\\" ✓"}`,
    ]);
    await new RedisPublisher(testRedis()).publishAll(sent);
    await waitFor(() => received.length === sent.length, 5000);
    expect(received).toEqual(sent);

    await new RedisPublisher(testRedis()).publishAll([]);
  });
});
