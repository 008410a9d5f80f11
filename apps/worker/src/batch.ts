import { ALL, conversationTarget, encodeEnvelope, exceptUserTarget, positionTimeMs, streamPosition, type RedisNames, type ReceivedEntry } from "@chat/bus";
import { pairKey, type BatchOutcome, type NewMessage, type ReadReceipt } from "@chat/db";

/** Stream entries split by kind, in stream order, ready for persistBatch. */
export interface PreparedBatch {
  messages: NewMessage[];
  reads: ReadReceipt[];
  /** Entries that cannot be decoded: recorded in the dead-letter stream and acknowledged. */
  poison: ReceivedEntry[];
}

export function prepareBatch(entries: readonly ReceivedEntry[], names: RedisNames): PreparedBatch {
  const batch: PreparedBatch = { messages: [], reads: [], poison: [] };
  for (const received of entries) {
    const { entry, streamId } = received;
    if (!entry) {
      batch.poison.push(received);
      continue;
    }
    const position = streamPosition(streamId);
    if (entry.kind === "message") {
      batch.messages.push({
        id: entry.id,
        streamPosition: position,
        fromUser: entry.from,
        toUser: entry.to,
        roomId: names.roomId(entry.from, entry.to),
        content: entry.message,
        multimediaUrl: entry.multimedia_url,
        fileIdentifier: entry.file_identifier ?? null,
        multimediaUrlExpiration: entry.multimedia_url_expiration ?? null,
        clientId: entry.client_id ?? null,
        dateAdded: entry.date_added,
      });
    } else {
      batch.reads.push({ streamPosition: position, reader: entry.reader, otherUser: entry.other });
    }
  }
  return batch;
}

/** A publish to a user channel, or a read receipt to a conversation's channel: [channel, envelope]. */
export type Notification = [channel: string, payload: string];

/**
 * The notification events of a committed batch, in stream order, with the counts as committed.
 * Messages that an earlier attempt already persisted are absent from `outcome.inserted` and get none.
 * Each reader's last read of the batch also gets a read_receipt on the conversation's channel, for the
 * other side's chat sockets (never the reader's); one an earlier attempt already sent is sent again,
 * which changes nothing for a client.
 */
export function notificationsFor(batch: PreparedBatch, outcome: BatchOutcome, names: RedisNames, origin: string): Notification[] {
  type Item = { position: bigint; publish: Notification[] };
  const items: Item[] = [];
  const total = (u: string) => outcome.totalUnread.get(u) ?? 0;
  const pair = (u: string, o: string) => outcome.pairUnread.get(pairKey(u, o)) ?? 0;
  for (const m of batch.messages) {
    if (!outcome.inserted.has(m.id)) continue;
    const channel = names.userChannel(m.toUser);
    items.push({
      position: m.streamPosition,
      publish: [
        [channel, encodeEnvelope(origin, ALL, [JSON.stringify({ type: "new_message_notification", unread_count: total(m.toUser) })])],
        [
          channel,
          encodeEnvelope(origin, conversationTarget(m.fromUser), [
            JSON.stringify({ type: "single_conversation_new_message_notification" }),
            JSON.stringify({ type: "single_conversation_unread_count", unread_count: pair(m.toUser, m.fromUser) }),
            JSON.stringify({ type: "single_conversation_last_message", last_message: m.content, last_datetime: m.dateAdded }),
          ]),
        ],
      ],
    });
  }
  const lastReadOf = new Map<string, (typeof batch.reads)[number]>();
  for (const r of batch.reads) lastReadOf.set(pairKey(r.reader, r.otherUser), r);
  for (const [key, r] of lastReadOf) {
    if (!outcome.lastRead.has(key)) continue;
    const receipt = {
      type: "read_receipt",
      user: r.reader,
      room: r.otherUser,
      last_read_id: outcome.lastRead.get(key) ?? null,
      read_at: new Date(positionTimeMs(r.streamPosition)).toISOString(),
    };
    items.push({
      position: r.streamPosition,
      publish: [[names.roomChannel(names.roomId(r.reader, r.otherUser)), encodeEnvelope(origin, exceptUserTarget(r.reader), [JSON.stringify(receipt)])]],
    });
  }
  for (const r of batch.reads) {
    const channel = names.userChannel(r.reader);
    items.push({
      position: r.streamPosition,
      publish: [
        [channel, encodeEnvelope(origin, ALL, [JSON.stringify({ type: "unread_count", unread_count: total(r.reader) })])],
        [
          channel,
          encodeEnvelope(origin, conversationTarget(r.otherUser), [
            JSON.stringify({ type: "single_conversation_unread_count", unread_count: pair(r.reader, r.otherUser) }),
          ]),
        ],
      ],
    });
  }
  items.sort((a, b) => (a.position < b.position ? -1 : a.position > b.position ? 1 : 0));
  return items.flatMap((i) => i.publish);
}

/** The two users whose counters and notifications an entry touches; undefined for a poison entry. */
function usersOf(received: ReceivedEntry): [string, string] | undefined {
  const entry = received.entry;
  if (!entry) return undefined;
  return entry.kind === "message" ? [entry.from, entry.to] : [entry.reader, entry.other];
}

/**
 * Splits a batch into at most `parts` groups that share no user, so that they can be written at
 * once without waiting on each other's per-user locks. Each user's entries stay in one group, in
 * stream order. An entry that would join two groups, every later entry of its users, and poison
 * entries go to `rest`, to be written after the groups: no user's entries are ever reordered.
 */
export function splitByUsers(entries: readonly ReceivedEntry[], parts: number): { groups: ReceivedEntry[][]; rest: ReceivedEntry[] } {
  const DEFERRED = -1;
  const groups: ReceivedEntry[][] = Array.from({ length: parts }, () => []);
  const rest: ReceivedEntry[] = [];
  const owner = new Map<string, number>();
  for (const received of entries) {
    const users = usersOf(received);
    if (!users) {
      rest.push(received);
      continue;
    }
    const [a, b] = users;
    const ga = owner.get(a);
    const gb = owner.get(b);
    let group: number;
    if (ga === DEFERRED || gb === DEFERRED || (ga !== undefined && gb !== undefined && ga !== gb)) group = DEFERRED;
    else if (ga !== undefined) group = ga;
    else if (gb !== undefined) group = gb;
    else group = groups.reduce((best, g, i) => (g.length < groups[best]!.length ? i : best), 0);
    if (group === DEFERRED) rest.push(received);
    else groups[group]!.push(received);
    owner.set(a, group);
    owner.set(b, group);
  }
  return { groups: groups.filter((g) => g.length > 0), rest };
}
