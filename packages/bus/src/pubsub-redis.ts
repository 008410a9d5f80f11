import { readFileSync } from "node:fs";
import type { Cluster, Redis } from "ioredis";
import type { ChannelTransport, Publisher } from "./bus.js";
import { slotOf } from "./partitions.js";

const publishManyLua = readFileSync(new URL("./lua/publish-many.lua", import.meta.url), "utf8");
const probeLua = readFileSync(new URL("./lua/probe.lua", import.meta.url), "utf8");

/**
 * Most publishes per script call: bounds how long one call holds Redis (about 0.3 ms for 200) while
 * keeping the per-call cost spread thin.
 */
const PUBLISHES_PER_CALL = 200;

type PublishMany = (...args: string[]) => Promise<number>;

/**
 * Publishes with SPUBLISH (sharded pub/sub): on a Redis Cluster a message goes to the one shard
 * that owns the channel's slot, where classic PUBLISH is broadcast to every node of the cluster.
 * On a single Redis SPUBLISH does what PUBLISH does (no cluster to route in), so one form serves both;
 * its cost there against PUBLISH is still to be measured in the benchmark.
 *
 * Several at once (the worker's notifications of a batch): on a single Redis, one script call per
 * PUBLISHES_PER_CALL, in order (ioredis spends about 10 µs of CPU on each command of a pipeline and
 * about 1.4 µs per publish in a script call). On a cluster, one SPUBLISH each, sent back to back:
 * the channels are users' and lie in different slots, which one script cannot reach; per channel
 * they stay in order (one connection per shard).
 */
export class RedisPublisher implements Publisher {
  private readonly publishMany: PublishMany;

  constructor(private readonly redis: Redis | Cluster) {
    if (!("chatPublishMany" in redis)) redis.defineCommand("chatPublishMany", { numberOfKeys: 0, lua: publishManyLua });
    if (!("chatProbe" in redis)) redis.defineCommand("chatProbe", { numberOfKeys: 1, lua: probeLua });
    const command = (redis as unknown as { chatPublishMany: PublishMany }).chatPublishMany;
    this.publishMany = (...args) => command.apply(redis, args);
  }

  async publish(channel: string, payload: string): Promise<void> {
    await this.redis.spublish(channel, payload);
  }

  /**
   * Publishes on a shard channel and resolves to how many subscribers on the server serving its slot
   * got it, and which server that was (its run_id: another one after a failover, a slot move or a
   * restart).
   */
  async probe(channel: string, payload: string): Promise<{ receivers: number; server: string }> {
    const run = (this.redis as unknown as { chatProbe(key: string, payload: string): Promise<[number, string]> }).chatProbe;
    const [receivers, server] = await run.call(this.redis, channel, payload);
    return { receivers: Number(receivers), server: String(server) };
  }

  async publishAll(messages: readonly (readonly [string, string])[]): Promise<void> {
    const calls: Promise<unknown>[] = [];
    if (this.redis.isCluster) {
      for (const [channel, payload] of messages) calls.push(this.redis.spublish(channel, payload));
    } else {
      for (let start = 0; start < messages.length; start += PUBLISHES_PER_CALL) {
        const args: string[] = [];
        for (const [channel, payload] of messages.slice(start, start + PUBLISHES_PER_CALL)) args.push(channel, payload);
        calls.push(this.publishMany(...args));
      }
    }
    await Promise.all(calls);
  }
}

/**
 * Sharded subscriptions (SSUBSCRIBE) on a dedicated connection: a single Redis connection in
 * subscriber mode, or ioredis' sharded subscribers on a cluster (one connection per shard, which
 * takes one slot per SSUBSCRIBE: channels are grouped by slot). ioredis subscribes every channel
 * again after a reconnect or a failover; messages published meanwhile are lost.
 */
export class RedisChannelTransport implements ChannelTransport {
  constructor(private readonly subscriber: Redis | Cluster) {}

  async subscribe(channels: readonly string[]): Promise<void> {
    if (!this.subscriber.isCluster) {
      await this.subscriber.ssubscribe(...channels);
      return;
    }
    const bySlot = new Map<number, string[]>();
    for (const channel of channels) {
      const slot = slotOf(channel);
      const group = bySlot.get(slot);
      if (group) group.push(channel);
      else bySlot.set(slot, [channel]);
    }
    await Promise.all([...bySlot.values()].map((group) => this.subscriber.ssubscribe(...group)));
  }

  async unsubscribe(channel: string): Promise<void> {
    await this.subscriber.sunsubscribe(channel);
  }

  onMessage(handler: (channel: string, payload: Buffer) => void): void {
    this.subscriber.on("smessageBuffer", (channel: Buffer, payload: Buffer) => handler(channel.toString(), payload));
  }
}
