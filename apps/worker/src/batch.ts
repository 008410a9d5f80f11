import {
  ALL,
  conversationTarget,
  encodeEnvelope,
  exceptUserTarget,
  isGroupConversation,
  positionTimeMs,
  roomLabel,
  streamPosition,
  type RedisNames,
  type ReceivedEntry,
} from "@chat/bus";
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
        roomId: names.conversationOf(entry.from, entry.to),
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

/** Frames for the sockets of one target on one channel. */
interface Delivery {
  channel: string;
  target: string;
  frames: string[];
}

/**
 * The notification events of a committed batch, with the counts as committed, in stream order for
 * each socket: one envelope per channel and target, however many messages and members the batch
 * holds (a group message's notifications go to each member's channel, batched there).
 * Messages that an earlier attempt already persisted are absent from `outcome.inserted` and get none.
 * A group message's recipients are the members the batch counted it for (outcome.pairUnread): the
 * membership as committed when it was written. Each reader's last read of the batch also gets a
 * read_receipt on the conversation's channel, for the other members' chat sockets (never the
 * reader's); one an earlier attempt already sent is sent again, which changes nothing for a client.
 */
export function notificationsFor(
  batch: PreparedBatch,
  outcome: BatchOutcome,
  names: RedisNames,
  origin: string,
): { publishes: Notification[]; notifications: number } {
  type Item = { position: bigint; deliveries: Delivery[] };
  const items: Item[] = [];
  const total = (u: string) => outcome.totalUnread.get(u) ?? 0;
  const pair = (u: string, o: string) => outcome.pairUnread.get(pairKey(u, o)) ?? 0;
  let members: Map<string, string[]> | null = null;
  const membersOf = (group: string): string[] => {
    if (members === null) {
      members = new Map();
      for (const key of outcome.pairUnread.keys()) {
        const [user, other] = key.split("\n") as [string, string];
        if (!isGroupConversation(other)) continue;
        const list = members.get(other);
        if (list) list.push(user);
        else members.set(other, [user]);
      }
    }
    return members.get(group) ?? [];
  };
  for (const m of batch.messages) {
    if (!outcome.inserted.has(m.id)) continue;
    const deliveries: Delivery[] = [];
    const recipients = isGroupConversation(m.toUser) ? membersOf(m.toUser).filter((u) => u !== m.fromUser) : [m.toUser];
    for (const user of recipients) {
      const channel = names.userChannel(user);
      const other = isGroupConversation(m.toUser) ? m.toUser : m.fromUser;
      deliveries.push(
        { channel, target: ALL, frames: [JSON.stringify({ type: "new_message_notification", unread_count: total(user) })] },
        {
          channel,
          target: conversationTarget(other),
          frames: [
            JSON.stringify({ type: "single_conversation_new_message_notification" }),
            JSON.stringify({ type: "single_conversation_unread_count", unread_count: pair(user, other) }),
            JSON.stringify({ type: "single_conversation_last_message", last_message: m.content, last_datetime: m.dateAdded }),
          ],
        },
      );
    }
    items.push({ position: m.streamPosition, deliveries });
  }
  const lastReadOf = new Map<string, (typeof batch.reads)[number]>();
  for (const r of batch.reads) lastReadOf.set(pairKey(r.reader, r.otherUser), r);
  for (const [key, r] of lastReadOf) {
    if (!outcome.lastRead.has(key)) continue;
    const receipt = {
      type: "read_receipt",
      user: r.reader,
      room: roomLabel(r.otherUser),
      last_read_id: outcome.lastRead.get(key) ?? null,
      read_at: new Date(positionTimeMs(r.streamPosition)).toISOString(),
    };
    items.push({
      position: r.streamPosition,
      deliveries: [{ channel: names.roomChannel(names.conversationOf(r.reader, r.otherUser)), target: exceptUserTarget(r.reader), frames: [JSON.stringify(receipt)] }],
    });
  }
  for (const r of batch.reads) {
    // A reader no longer in the group has no counts to tell.
    if (!outcome.pairUnread.has(pairKey(r.reader, r.otherUser))) continue;
    const channel = names.userChannel(r.reader);
    items.push({
      position: r.streamPosition,
      deliveries: [
        { channel, target: ALL, frames: [JSON.stringify({ type: "unread_count", unread_count: total(r.reader) })] },
        { channel, target: conversationTarget(r.otherUser), frames: [JSON.stringify({ type: "single_conversation_unread_count", unread_count: pair(r.reader, r.otherUser) })] },
      ],
    });
  }
  items.sort((a, b) => (a.position < b.position ? -1 : a.position > b.position ? 1 : 0));
  // One envelope per channel and target: each socket gets its frames in the order above.
  const merged = new Map<string, Delivery>();
  let notifications = 0;
  for (const item of items) {
    for (const d of item.deliveries) {
      notifications++;
      const key = `${d.channel}\t${d.target}`;
      const into = merged.get(key);
      if (into) into.frames.push(...d.frames);
      else merged.set(key, { ...d, frames: [...d.frames] });
    }
  }
  return { publishes: [...merged.values()].map((d) => [d.channel, encodeEnvelope(origin, d.target, d.frames)]), notifications };
}

/**
 * The two keys whose counters and notifications an entry touches: its two users, or for a group its
 * sender (or reader) and the group, which stands for all its members (chat_persist_batch locks
 * them); undefined for a poison entry.
 */
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
