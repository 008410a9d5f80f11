import type { Redis } from "ioredis";
import type { ChannelTransport, Publisher } from "./bus.js";

/** Publishes with Redis PUBLISH; several at once go in one pipeline (one round trip). */
export class RedisPublisher implements Publisher {
  constructor(private readonly redis: Redis) {}

  async publish(channel: string, payload: string): Promise<void> {
    await this.redis.publish(channel, payload);
  }

  async publishAll(messages: readonly (readonly [string, string])[]): Promise<void> {
    const pipeline = this.redis.pipeline();
    for (const [channel, payload] of messages) pipeline.publish(channel, payload);
    const results = await pipeline.exec();
    const failed = results?.find(([err]) => err);
    if (failed) throw failed[0];
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
