import type { ChannelTransport, Publisher } from "./bus.js";

/**
 * Pub/sub inside one process: the publisher hands each message to the transports subscribed to the
 * channel, on a later tick (as a network would), in publish order.
 */
export class MemoryPubSub implements Publisher {
  private readonly subscribers = new Map<string, Set<MemoryChannelTransport>>();

  /** A receiving side for one router. */
  transport(): MemoryChannelTransport {
    return new MemoryChannelTransport(this.subscribers);
  }

  async publish(channel: string, payload: string): Promise<void> {
    const targets = this.subscribers.get(channel);
    if (!targets || targets.size === 0) return;
    const bytes = Buffer.from(payload);
    queueMicrotask(() => {
      for (const t of targets) t.receive(channel, bytes);
    });
  }

  async publishAll(messages: readonly (readonly [string, string])[]): Promise<void> {
    for (const [channel, payload] of messages) await this.publish(channel, payload);
  }
}

export class MemoryChannelTransport implements ChannelTransport {
  private handler: ((channel: string, payload: Buffer) => void) | null = null;

  constructor(private readonly subscribers: Map<string, Set<MemoryChannelTransport>>) {}

  async subscribe(channels: readonly string[]): Promise<void> {
    for (const channel of channels) {
      let set = this.subscribers.get(channel);
      if (!set) this.subscribers.set(channel, (set = new Set()));
      set.add(this);
    }
  }

  async unsubscribe(channel: string): Promise<void> {
    const set = this.subscribers.get(channel);
    if (!set) return;
    set.delete(this);
    if (set.size === 0) this.subscribers.delete(channel);
  }

  onMessage(handler: (channel: string, payload: Buffer) => void): void {
    this.handler = handler;
  }

  receive(channel: string, payload: Buffer): void {
    this.handler?.(channel, payload);
  }
}
