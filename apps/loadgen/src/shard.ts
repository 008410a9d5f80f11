import { performance } from "node:perf_hooks";
import { decodeClientId, encodeClientId } from "./client-id.js";
import { Histogram, type HistogramJson } from "./histogram.js";
import { protocolNamed, type ProtocolName } from "./protocols/index.js";
import type { UserConnection } from "./protocols/protocol.js";
import { addCounts, emptyCounts, SequenceTracker, type DeliveryCounts } from "./sequence-tracker.js";
import { signToken } from "./token.js";

/** One shard's part of a load run: a range of pairs, driven from one thread. */
export interface ShardOptions {
  protocol: ProtocolName;
  /** Base URLs of the nodes (`ws://host:port`); pair p puts its users on nodes p and p+1 (mod n). */
  urls: string[];
  /** HS256 secret the tokens are signed with. */
  secret: string;
  /** Usernames are `${userPrefix}${pair}a` and `${userPrefix}${pair}b`. */
  userPrefix: string;
  firstPair: number;
  pairCount: number;
  /** This shard's send rate, messages per second, over all its senders. */
  rate: number;
  /** Sends in this first part of the schedule count for loss but are not timed (warms the servers' JIT and pools). */
  warmupMs: number;
  /** The timed part of the schedule. */
  durationMs: number;
  /** After the last send, how long stragglers (deliveries and notifications) are waited for. */
  drainMs: number;
  messageBytes: number;
  /** Open each user's notification socket and time `new_message_notification`s. */
  notifications: boolean;
  connectConcurrency: number;
  connectTimeoutMs: number;
}

/** What a shard measured; histograms in microseconds. */
export interface ShardResult {
  counts: DeliveryCounts;
  /** `error` frames answering a send (the message was not accepted). */
  refused: number;
  /** Sender-side echoes of its own messages received. */
  acks: number;
  /** Sockets the server closed during the run. */
  unexpectedCloses: number;
  /** Frames that could not be matched to a stream (foreign client_id, unknown sender). */
  unmatchedFrames: number;
  notificationsExpected: number;
  notificationsReceived: number;
  histograms: {
    /** Recipient receives − scheduled send time: the delivery latency, free of coordinated omission. */
    latency: HistogramJson;
    /** Recipient receives − actual send time. */
    latencyFromSend: HistogramJson;
    /** Actual − scheduled send time: how far the generator fell behind its own schedule. */
    sendLag: HistogramJson;
    /** Sender's own echo − scheduled send time. */
    ack: HistogramJson;
    /** Recipient's new_message_notification − scheduled send time. */
    notification: HistogramJson;
    /** Recipient's new_message_notification − the message's date_added (accepted → committed, observed). */
    persistLag: HistogramJson;
  };
  /** Messages sent in the timed window, and the window's length (first to last timed send). */
  timedSent: number;
  timedWindowMs: number;
  /** Event-loop utilization of the shard's thread over the schedule (1 = never idle). */
  eventLoopUtilization: number;
  connectMs: number;
}

/** One direction of a pair: what its sender sent, and what its recipient got. */
class Stream {
  readonly tracker = new SequenceTracker();
  readonly scheduled: Float64Array;
  readonly sentAt: Float64Array;
  /** date_added (epoch ms) of each delivered message, for the persistence lag; 0 when not delivered. */
  readonly dateAdded: Float64Array;
  notified = 0;
  constructor(capacity: number) {
    this.scheduled = new Float64Array(capacity);
    this.sentAt = new Float64Array(capacity);
    this.dateAdded = new Float64Array(capacity);
  }
}

interface User {
  name: string;
  partner: string;
  url: string;
  out: Stream;
  in: Stream;
  conn: UserConnection | null;
}

export async function pool<T>(items: readonly T[], concurrency: number, fn: (item: T, index: number) => Promise<void>): Promise<void> {
  let next = 0;
  const runners = Array.from({ length: Math.max(1, Math.min(concurrency, items.length)) }, async () => {
    while (next < items.length) {
      const i = next++;
      await fn(items[i]!, i);
    }
  });
  await Promise.all(runners);
}

export class LoadShard {
  private readonly users: User[] = [];
  private readonly total: number;
  private readonly notifying: boolean;
  private measureFromUs = Infinity;
  private readonly h = {
    latency: new Histogram(),
    latencyFromSend: new Histogram(),
    sendLag: new Histogram(),
    ack: new Histogram(),
    notification: new Histogram(),
    persistLag: new Histogram(),
  };
  private refused = 0;
  private acks = 0;
  private unexpectedCloses = 0;
  private unmatched = 0;
  private connectMs = 0;

  constructor(private readonly o: ShardOptions) {
    this.notifying = o.notifications && protocolNamed(o.protocol).hasNotifications;
    this.total = Math.floor((o.rate * (o.warmupMs + o.durationMs)) / 1000);
    const senders = o.pairCount * 2;
    const capacity = Math.ceil(this.total / Math.max(1, senders)) + 1;
    const n = o.urls.length;
    for (let p = o.firstPair; p < o.firstPair + o.pairCount; p++) {
      const a = `${o.userPrefix}${p}a`;
      const b = `${o.userPrefix}${p}b`;
      const ab = new Stream(capacity);
      const ba = new Stream(capacity);
      this.users.push({ name: a, partner: b, url: o.urls[p % n]!, out: ab, in: ba, conn: null });
      this.users.push({ name: b, partner: a, url: o.urls[(p + 1) % n]!, out: ba, in: ab, conn: null });
    }
  }

  /** Opens every user's sockets; rejects (after closing those opened) if any cannot be opened. */
  async connect(): Promise<void> {
    const protocol = protocolNamed(this.o.protocol);
    const text = "x".repeat(this.o.messageBytes);
    const started = performance.now();
    try {
      await pool(this.users, this.o.connectConcurrency, async (u) => {
        u.conn = await protocol.connectUser({
          url: u.url,
          username: u.name,
          partner: u.partner,
          token: signToken(u.name, this.o.secret),
          text,
          notifications: this.notifying,
          timeoutMs: this.o.connectTimeoutMs,
          events: {
            message: (from, clientId, dateAdded) => this.onMessage(u, from, clientId, dateAdded),
            notification: () => this.onNotification(u),
            refused: () => this.refused++,
            closed: () => this.unexpectedCloses++,
          },
        });
      });
    } catch (err) {
      await this.close();
      throw err;
    }
    this.connectMs = performance.now() - started;
  }

  private onMessage(u: User, from: string, clientId: string | undefined, dateAdded: string | undefined): void {
    const id = decodeClientId(clientId);
    if (!id) return void this.unmatched++;
    const nowUs = performance.now() * 1000;
    if (from === u.name) {
      this.acks++;
      if (id.scheduledUs >= this.measureFromUs) this.h.ack.record(nowUs - id.scheduledUs);
      return;
    }
    if (from !== u.partner) return void this.unmatched++;
    const stream = u.in;
    const arrival = stream.tracker.record(id.seq);
    if (arrival === "duplicate" || arrival === "unknown") return;
    if (id.scheduledUs >= this.measureFromUs) {
      this.h.latency.record(nowUs - id.scheduledUs);
      this.h.latencyFromSend.record(nowUs - stream.sentAt[id.seq]! * 1000);
    }
    if (this.notifying && dateAdded) stream.dateAdded[id.seq] = Date.parse(dateAdded);
  }

  /**
   * Notifications carry no client_id, but each recipient hears from one partner only and the
   * worker notifies in stream order, so the k-th notification is about the partner's k-th message.
   */
  private onNotification(u: User): void {
    const stream = u.in;
    const k = stream.notified++;
    if (k >= stream.tracker.sentCount) return void this.unmatched++;
    const now = performance.now();
    const scheduled = stream.scheduled[k]!;
    if (scheduled * 1000 >= this.measureFromUs) this.h.notification.record((now - scheduled) * 1000);
    const accepted = stream.dateAdded[k]!;
    if (accepted > 0) this.h.persistLag.record((Date.now() - accepted) * 1000);
  }

  /**
   * Sends the open-loop schedule starting at `startAtEpochMs`: message i is due at start + i/rate,
   * from sender i mod senders, whatever the replies do. A late timer sends every due message at
   * once, each stamped with its own scheduled time, so the lateness shows in the latency.
   * Then waits for stragglers and returns the measurements; the sockets stay open until close().
   * `onScheduleDone` fires after the last send.
   */
  async run(startAtEpochMs: number, onScheduleDone?: () => void): Promise<ShardResult> {
    const start = performance.now() + (startAtEpochMs - Date.now());
    const interval = 1000 / this.o.rate;
    const measureFrom = start + this.o.warmupMs;
    this.measureFromUs = measureFrom * 1000;
    const senders = this.users;
    const total = this.total;
    let firstTimed = Infinity;
    let lastTimed = 0;
    let timedSent = 0;
    const elu0 = performance.eventLoopUtilization();
    let i = 0;
    await new Promise<void>((resolve) => {
      const tick = () => {
        const now = performance.now();
        const due = Math.min(total, Math.floor((now - start) / interval) + 1);
        for (; i < due; i++) {
          const scheduled = start + i * interval;
          const u = senders[i % senders.length]!;
          const stream = u.out;
          const seq = stream.tracker.sent();
          stream.scheduled[seq] = scheduled;
          const at = performance.now();
          stream.sentAt[seq] = at;
          if (scheduled >= measureFrom) {
            this.h.sendLag.record((at - scheduled) * 1000);
            if (at < firstTimed) firstTimed = at;
            lastTimed = at;
            timedSent++;
          }
          u.conn!.send(encodeClientId(seq, scheduled * 1000));
        }
        if (i >= total) return resolve();
        setTimeout(tick, Math.max(0, start + i * interval - performance.now()));
      };
      setTimeout(tick, Math.max(0, start - performance.now()));
    });
    const elu = performance.eventLoopUtilization(elu0).utilization;
    onScheduleDone?.();
    await this.drain();
    return this.result(timedSent, timedSent > 1 ? lastTimed - firstTimed : 0, elu);
  }

  private settled(): boolean {
    for (const u of this.users) {
      if (!u.in.tracker.complete) return false;
      if (this.notifying && u.in.notified < u.in.tracker.sentCount) return false;
    }
    return true;
  }

  private async drain(): Promise<void> {
    const deadline = performance.now() + this.o.drainMs;
    while (!this.settled() && performance.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  }

  private result(timedSent: number, timedWindowMs: number, eventLoopUtilization: number): ShardResult {
    const counts = emptyCounts();
    let notificationsExpected = 0;
    let notificationsReceived = 0;
    for (const u of this.users) {
      addCounts(counts, u.in.tracker.counts());
      if (this.notifying) {
        notificationsExpected += u.in.tracker.sentCount;
        notificationsReceived += Math.min(u.in.notified, u.in.tracker.sentCount);
      }
    }
    return {
      counts,
      refused: this.refused,
      acks: this.acks,
      unexpectedCloses: this.unexpectedCloses,
      unmatchedFrames: this.unmatched,
      notificationsExpected,
      notificationsReceived,
      histograms: {
        latency: this.h.latency.toJSON(),
        latencyFromSend: this.h.latencyFromSend.toJSON(),
        sendLag: this.h.sendLag.toJSON(),
        ack: this.h.ack.toJSON(),
        notification: this.h.notification.toJSON(),
        persistLag: this.h.persistLag.toJSON(),
      },
      timedSent,
      timedWindowMs,
      eventLoopUtilization,
      connectMs: this.connectMs,
    };
  }

  async close(): Promise<void> {
    await pool(this.users, 256, async (u) => {
      const c = u.conn;
      u.conn = null;
      await c?.close();
    });
  }
}
