import { readFileSync } from "node:fs";
import type { Redis } from "ioredis";
import type { ChannelTransport, Publisher } from "./bus.js";

const publishManyLua = readFileSync(new URL("./lua/publish-many.lua", import.meta.url), "utf8");

/**
 * Most publishes per script call: bounds how long one call holds Redis (about 0.3 ms for 200) while
 * keeping the per-call cost spread thin.
 */
const PUBLISHES_PER_CALL = 200;

type PublishMany = (...args: string[]) => Promise<number>;

/**
 * Publishes with Redis PUBLISH. Several at once (the worker's notifications of a batch) go as one
 * script call per PUBLISHES_PER_CALL, in order: ioredis spends about 10 µs of CPU on each command
 * of a pipeline and about 1.4 µs per publish in a script call, for 0.5-1 µs more in Redis (measured
 * with 1,000 notification-sized publishes, docs/benchmarks.md).
 */
export class RedisPublisher implements Publisher {
  private readonly publishMany: PublishMany;

  constructor(private readonly redis: Redis) {
    if (!("chatPublishMany" in redis)) redis.defineCommand("chatPublishMany", { numberOfKeys: 0, lua: publishManyLua });
    const command = (redis as unknown as { chatPublishMany: PublishMany }).chatPublishMany;
    this.publishMany = (...args) => command.apply(redis, args);
  }

  async publish(channel: string, payload: string): Promise<void> {
    await this.redis.publish(channel, payload);
  }

  async publishAll(messages: readonly (readonly [string, string])[]): Promise<void> {
    // Sent back to back on one connection, so Redis runs the calls in this order.
    const calls: Promise<number>[] = [];
    for (let start = 0; start < messages.length; start += PUBLISHES_PER_CALL) {
      const args: string[] = [];
      for (const [channel, payload] of messages.slice(start, start + PUBLISHES_PER_CALL)) args.push(channel, payload);
      calls.push(this.publishMany(...args));
    }
    await Promise.all(calls);
  }
}

/**
 * Subscriptions on a dedicated Redis connection (one in subscriber mode can do nothing else).
 * ioredis subscribes every channel again after a reconnect; messages published meanwhile are lost.
 */
export class RedisChannelTransport implements ChannelTransport {
  constructor(private readonly subscriber: Redis) {}

  async subscribe(channels: readonly string[]): Promise<void> {
    await this.subscriber.subscribe(...channels);
  }

  async unsubscribe(channel: string): Promise<void> {
    await this.subscriber.unsubscribe(channel);
  }

  onMessage(handler: (channel: string, payload: Buffer) => void): void {
    this.subscriber.on("messageBuffer", (channel: Buffer, payload: Buffer) => handler(channel.toString(), payload));
  }
}
