/** How one received sequence number was classified. */
export type Arrival = "in_order" | "out_of_order" | "duplicate" | "unknown";

/** Delivery accounting of one or more streams, summed. */
export interface DeliveryCounts {
  /** Messages the senders sent. */
  sent: number;
  /** Distinct messages received. */
  received: number;
  /** Sent but never received (sent - received). */
  lost: number;
  /** Receptions of a message already received. */
  duplicates: number;
  /** Distinct messages that arrived after a later-sent message of the same stream. */
  outOfOrder: number;
  /** Receptions of a sequence number that was never sent. */
  unknown: number;
}

export const emptyCounts = (): DeliveryCounts => ({ sent: 0, received: 0, lost: 0, duplicates: 0, outOfOrder: 0, unknown: 0 });

export function addCounts(into: DeliveryCounts, c: DeliveryCounts): DeliveryCounts {
  into.sent += c.sent;
  into.received += c.received;
  into.lost += c.lost;
  into.duplicates += c.duplicates;
  into.outOfOrder += c.outOfOrder;
  into.unknown += c.unknown;
  return into;
}

/**
 * Loss, duplicate and order accounting of one stream of messages numbered 0, 1, 2... by one
 * sender, as seen by one receiver. Sequence numbers are dense, so a growable bitmap records
 * which have arrived.
 */
export class SequenceTracker {
  private seen = new Uint8Array(1024);
  private highest = -1;
  /** Messages sent on this stream so far (the sender calls `sent()`). */
  sentCount = 0;
  received = 0;
  duplicates = 0;
  outOfOrder = 0;
  unknown = 0;

  /** Counts one send and returns its sequence number. */
  sent(): number {
    return this.sentCount++;
  }

  record(seq: number): Arrival {
    if (!Number.isInteger(seq) || seq < 0 || seq >= this.sentCount) {
      this.unknown++;
      return "unknown";
    }
    const byte = seq >>> 3;
    const bit = 1 << (seq & 7);
    if (byte >= this.seen.length) {
      const grown = new Uint8Array(Math.max(this.seen.length * 2, byte + 1));
      grown.set(this.seen);
      this.seen = grown;
    }
    if (this.seen[byte]! & bit) {
      this.duplicates++;
      return "duplicate";
    }
    this.seen[byte]! |= bit;
    this.received++;
    if (seq < this.highest) {
      this.outOfOrder++;
      return "out_of_order";
    }
    this.highest = seq;
    return "in_order";
  }

  /** True once every message sent so far has arrived. */
  get complete(): boolean {
    return this.received === this.sentCount;
  }

  counts(): DeliveryCounts {
    return {
      sent: this.sentCount,
      received: this.received,
      lost: this.sentCount - this.received,
      duplicates: this.duplicates,
      outOfOrder: this.outOfOrder,
      unknown: this.unknown,
    };
  }
}
