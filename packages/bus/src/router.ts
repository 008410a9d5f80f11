import type { ChannelTransport } from "./bus.js";
import { decodeEnvelope, type Envelope } from "./envelope.js";
import type { Log } from "./log.js";

/** Something local (a socket session) that wants the envelopes of a channel. */
export interface ChannelListener {
  deliver(envelope: Envelope): void;
}

interface ChannelEntry {
  listeners: Set<ChannelListener>;
  subscribed: Promise<void>;
  unsubscribeTimer: NodeJS.Timeout | null;
}

export interface RouterOptions {
  /** How long an empty channel stays subscribed, so a quick reconnect does not flap. @default 2000 */
  unsubscribeDelayMs?: number;
  log: Log;
  /** Called once per dispatched envelope with the number of local listeners, for metrics. */
  observe?: (envelope: Envelope, listeners: number) => void;
}

/**
 * The gateway's local index `channel -> listeners`, which drives its subscriptions: a node is
 * subscribed to a channel exactly while it has a local listener for it (plus a short grace delay).
 * Guarantee: pub/sub is at-most-once and ordered per channel; once `add` resolves, every message
 * published on the channel afterwards reaches the listener while the transport stays connected.
 */
export class SubscriptionRouter {
  private readonly channels = new Map<string, ChannelEntry>();
  private readonly unsubscribeDelayMs: number;
  private readonly log: Log;
  private readonly observe: RouterOptions["observe"];
  /** Envelopes that could not be decoded, for metrics. */
  decodeErrors = 0;

  constructor(
    private readonly transport: ChannelTransport,
    options: RouterOptions,
  ) {
    this.unsubscribeDelayMs = options.unsubscribeDelayMs ?? 2000;
    this.log = options.log;
    this.observe = options.observe;
    transport.onMessage((channel, payload) => this.dispatch(channel, payload));
  }

  /** Number of channels this node is subscribed to. */
  get channelCount(): number {
    return this.channels.size;
  }

  /**
   * Subscribes every channel of the index again, e.g. once a reconnected subscriber is ready:
   * resolves when Redis has confirmed them all, i.e. when live delivery is whole again.
   */
  async resubscribeAll(): Promise<void> {
    const channels = [...this.channels.keys()];
    for (let i = 0; i < channels.length; i += 1000) await this.transport.subscribe(channels.slice(i, i + 1000));
  }

  /** Resolves once the node is subscribed; on failure the listener is not registered. */
  async add(channel: string, listener: ChannelListener): Promise<void> {
    let entry = this.channels.get(channel);
    if (!entry) {
      entry = { listeners: new Set(), subscribed: this.transport.subscribe([channel]), unsubscribeTimer: null };
      this.channels.set(channel, entry);
    }
    if (entry.unsubscribeTimer) {
      clearTimeout(entry.unsubscribeTimer);
      entry.unsubscribeTimer = null;
    }
    entry.listeners.add(listener);
    try {
      await entry.subscribed;
    } catch (cause) {
      this.remove(channel, listener);
      throw new SubscribeError(channel, cause);
    }
  }

  remove(channel: string, listener: ChannelListener): void {
    const entry = this.channels.get(channel);
    if (!entry || !entry.listeners.delete(listener) || entry.listeners.size > 0) return;
    entry.unsubscribeTimer = setTimeout(() => {
      // Re-check: a socket may have arrived during the delay.
      if (entry.listeners.size > 0 || this.channels.get(channel) !== entry) return;
      this.channels.delete(channel);
      this.transport.unsubscribe(channel).catch((err: unknown) => {
        this.log.warn({ channel, err }, "unsubscribe failed");
      });
    }, this.unsubscribeDelayMs);
    entry.unsubscribeTimer.unref();
  }

  private dispatch(channel: string, payload: Buffer): void {
    const entry = this.channels.get(channel);
    if (!entry || entry.listeners.size === 0) return;
    let envelope: Envelope;
    try {
      envelope = decodeEnvelope(payload);
    } catch (err) {
      this.decodeErrors++;
      this.log.warn({ channel, err }, "dropped undecodable envelope");
      return;
    }
    for (const listener of entry.listeners) listener.deliver(envelope);
    this.observe?.(envelope, entry.listeners.size);
  }
}

export class SubscribeError extends Error {
  override readonly name = "SubscribeError";
  readonly code = "subscribe_failed";
  constructor(
    readonly channel: string,
    cause: unknown,
  ) {
    super(`could not subscribe to ${channel}`, { cause });
  }
}
