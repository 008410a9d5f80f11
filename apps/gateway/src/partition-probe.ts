import { encodeEnvelope, type ChannelListener, type RedisNames, type SubscriptionRouter } from "@chat/bus";
import type { Logger } from "@chat/log";
import type { GatewayMetrics } from "./metrics.js";

/**
 * Publishes a probe on a shard channel; resolves to how many subscribers got it (SPUBLISH's reply)
 * on the server serving the channel's slot, and which server that was (any id that changes when
 * another server or a restarted one serves it).
 */
export type ProbePublish = (channel: string, payload: string) => Promise<{ receivers: number; server: string }>;

/** The envelope target of probes: no socket wants it, and the delivery-latency histogram leaves it out. */
export const PROBE_TARGET = "probe";

/** What the probe tells the node. */
export interface ProbeEvents {
  /** A partition's subscriptions are live again after it was unavailable: its sockets may have missed live events. */
  back(partition: number): void;
  /** A partition's subscription was found missing on a shard that serves: subscribe again. */
  missing(partition: number): void;
}

/**
 * Knows, per message-log partition, whether this node's subscriptions there are live: the client
 * library's ready event says a connection is up, not that the shard that now serves a slot (after a
 * failover or a slot move) has this node's subscriptions. So every interval the node publishes on
 * its own probe channel of each partition (one slot: the partition's) and reads SPUBLISH's reply,
 * the number of subscribers that got it on the node serving the slot:
 * - at least 1: live;
 * - 0: the shard serves, but this node's subscription is not there (moved, not yet followed):
 *   unavailable, and the node subscribes again;
 * - an error: the shard does not serve (failing over, unreachable): unavailable;
 * - at least 1 from another server than last time: it failed over or moved meanwhile.
 * Sends to an unavailable partition's conversations are refused (`unavailable`); when it is back
 * (or moved), its chat sockets are told to reconnect with `?since=`, since messages may have been
 * published there while this node was not subscribed. Only replies count, never how long they took,
 * so a slow event loop cannot make a partition look lost. A node whose whole bus is down (its
 * connection to a single Redis lost) is not the probe's business: its sends are refused anyway, and
 * it subscribes everything again when the connection is back.
 */
export class PartitionProbe implements ChannelListener {
  private readonly unavailable = new Set<number>();
  private timer: NodeJS.Timeout | null = null;
  private running = false;
  /** Bumped by forget(): a round that started before it reports nothing. */
  private generation = 0;
  /** Per partition, the server that answered its last probe (its run_id). */
  private servers: string[] = [];
  /** One frame: an envelope needs one to decode (nothing reads it; the reply to the publish is the answer). */
  private readonly payload: string;

  constructor(
    private readonly names: RedisNames,
    private readonly nodeId: string,
    private readonly router: SubscriptionRouter,
    private readonly publish: ProbePublish,
    /** Whether the node's bus as a whole serves: while not, sends are refused anyway and the probe stands by. */
    private readonly busReady: () => boolean,
    private readonly events: ProbeEvents,
    private readonly intervalMs: number,
    private readonly metrics: GatewayMetrics,
    private readonly log: Logger,
  ) {
    this.payload = encodeEnvelope(nodeId, PROBE_TARGET, ["{}"]);
  }

  /** Subscribes every probe channel and runs the first round (no `back` for it); then one round per interval. */
  async start(): Promise<void> {
    await Promise.all(Array.from({ length: this.names.partitions }, (_, p) => this.router.add(this.names.probeChannel(p, this.nodeId), this)));
    await this.round(false);
    this.timer = setInterval(() => {
      if (this.running || !this.busReady()) return;
      void this.round(true);
    }, this.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** The probe's own messages: nothing to do with them (the reply to the publish is the answer). */
  deliver(): void {}

  available(partition: number): boolean {
    return !this.unavailable.has(partition);
  }

  /**
   * Clears what the probe found without telling: the node's whole bus was down (not a shard) and it
   * just subscribed everything again. The next round finds any partition still lost.
   */
  forget(): void {
    this.generation++;
    this.unavailable.clear();
    this.servers = [];
    this.metrics.partitionsUnavailable.set(0);
  }

  /** The partitions whose sends are refused now, in order. */
  unavailablePartitions(): number[] {
    return [...this.unavailable].sort((a, b) => a - b);
  }

  private async round(announce: boolean): Promise<void> {
    this.running = true;
    const generation = this.generation;
    try {
      const replies = await Promise.all(
        Array.from({ length: this.names.partitions }, (_, p) =>
          this.publish(this.names.probeChannel(p, this.nodeId), this.payload).then(
            ({ receivers, server }) => ({ p, n: receivers, server, err: null as unknown }),
            (err: unknown) => ({ p, n: -1, server: "", err }),
          ),
        ),
      );
      if (generation !== this.generation || !this.busReady()) return;
      for (const { p, n, server, err } of replies) {
        if (n >= 1) {
          // Another server than at the last answer: the partition failed over or moved in between,
          // even if no probe saw it unanswered (the client library may hold a publish across a
          // failover and land it on the promoted master once this node's subscription followed),
          // so messages may have gone by unseen.
          const known = this.servers[p];
          const moved = known !== undefined && known !== server;
          this.servers[p] = server;
          if (this.unavailable.delete(p) || moved) {
            this.log.info({ partition: p, server, moved }, "partition's subscriptions are live again");
            if (announce) this.events.back(p);
          }
          continue;
        }
        if (!this.unavailable.has(p)) {
          this.unavailable.add(p);
          if (n === 0) this.log.warn({ partition: p }, "partition's shard serves without this node's subscription; sends refused, subscribing again");
          else this.log.warn({ partition: p, err }, "partition's shard does not answer; sends refused");
        }
        if (n === 0) this.events.missing(p);
      }
      this.metrics.partitionsUnavailable.set(this.unavailable.size);
    } finally {
      this.running = false;
    }
  }
}
