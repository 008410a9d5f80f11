import { createHash } from "node:crypto";
import { partitionOf, partitionTags } from "./partitions.js";

/** Partitions of the message log when CHAT_PARTITIONS is not set (see docs/scaling.md). */
export const DEFAULT_PARTITIONS = 16;

/**
 * Every Redis key, channel and stream name the cluster uses, built from one prefix (CHAT_REDIS_PREFIX)
 * so that several deployments or test runs share a Redis without seeing each other.
 *
 * One layout for a single Redis and a Redis Cluster: every name carries a `{hash tag}`, so that what
 * one script or command touches lies in one slot. Everything about one conversation (its partition's
 * stream, its channel, its presence, its client_ids) carries its partition's tag; everything about one
 * user (rate bucket, connection count, channel) carries `{u:<username>}`. No name is shared by the
 * whole deployment except `partitionsKey` and the workers' registry, read at start-up and by
 * heartbeats, never per message.
 *
 * Usernames never contain ':', '|', '{' or '}' (see @chat/protocol USERNAME_PATTERN), so these are
 * safe separators.
 */
export interface RedisNames {
  readonly prefix: string;
  /** Partitions of the message log (CHAT_PARTITIONS). */
  readonly partitions: number;
  /** The partition a conversation's messages, channel and presence live in. */
  partitionOf(roomId: string): number;
  /** The stream of one partition: every accepted message and read receipt of its conversations. */
  stream(partition: number): string;
  /** The consumer group of the persistence workers on every partition's stream (a name inside the stream, not a key). */
  readonly group: string;
  /** A partition's entries the worker could not persist however often it tried (invalid data), kept for an operator. */
  deadLetterStream(partition: number): string;
  /** A worker's lease on a partition: the partition is consumed by its holder only. */
  partitionLease(partition: number): string;
  /** Sorted set of live workers scored by expiry, from which each computes its share of partitions. */
  readonly workers: string;
  /** The partition count the deployment was started with, recorded on first start. */
  readonly partitionsKey: string;
  /** Identifies a conversation independently of who addresses whom: the two usernames in order. */
  roomId(a: string, b: string): string;
  /**
   * The conversation of an entry from `from` to `to`: `to` itself when it is a group's
   * (`#<group id>`, see groupConversation), else the pair's roomId.
   */
  conversationOf(from: string, to: string): string;
  /** Shard channel carrying a conversation's chat events (chat_message, user_join, user_leave). */
  roomChannel(roomId: string): string;
  /** Shard channel carrying one user's notification events. */
  userChannel(username: string): string;
  /**
   * Shard channel announcing a user coming online or going offline (their first socket opened, their
   * last closed): listened to by the all-conversations notification sockets of their partners.
   */
  onlineChannel(username: string): string;
  /** Shard channel a gateway publishes probes to and listens on, per partition, to know its subscriptions there are live. */
  probeChannel(partition: number, nodeId: string): string;
  /** Sorted set of a conversation's open chat sockets, scored by expiry time (ms). */
  presenceRoom(roomId: string): string;
  /** Sorted set of a partition's presence entries, scored by expiry, for the expiry sweep. */
  presenceIndex(partition: number): string;
  /** Token bucket of a user's sends (messages and reads), shared by every node. */
  rateBucket(username: string): string;
  /**
   * The chat_message frame of a sender's client_id in one conversation (from `from` to `to`, a user or a group), so a
   * retried send is not accepted twice. Scoped to the conversation: the same client_id sent to
   * another partner is another message.
   */
  clientMessage(from: string, to: string, clientId: string): string;
  /** Sorted set of a user's open sockets on any node, scored by expiry, for the per-user limit. */
  userConnections(username: string): string;
}

const roomIdOf = (a: string, b: string): string => (a < b ? `${a}:${b}` : `${b}:${a}`);

/**
 * A group's conversation id: what its entries carry as recipient (`to`), and its messages as room and
 * recipient in Postgres. No username starts with '#', so it never collides with a user or a pair.
 */
export const groupConversation = (groupId: string): string => `#${groupId}`;

/** Whether a recipient or conversation id is a group's (see groupConversation). */
export const isGroupConversation = (id: string): boolean => id.startsWith("#");

/** The group id of a group's conversation id; null for anything else (a username, a pair). */
export const groupIdOf = (id: string): string | null => (isGroupConversation(id) ? id.slice(1) : null);

/**
 * How frames name the conversation of a recipient (`room`): the group's id for a group, else the
 * username itself.
 */
export const roomLabel = (to: string): string => groupIdOf(to) ?? to;

const conversationOf = (from: string, to: string): string => (isGroupConversation(to) ? to : roomIdOf(from, to));

export function redisNames(prefix: string, partitions: number = DEFAULT_PARTITIONS): RedisNames {
  const tags = partitionTags(partitions).map((tag) => `${prefix}{${tag}}:`);
  const ofPartition = (p: number): string => {
    const tag = tags[p];
    if (tag === undefined) throw new RangeError(`no partition ${p} of ${partitions}`);
    return tag;
  };
  const ofRoom = (roomId: string): string => tags[partitionOf(roomId, partitions)]!;
  const ofUser = (username: string): string => `${prefix}{u:${username}}:`;
  return {
    prefix,
    partitions,
    partitionOf: (roomId) => partitionOf(roomId, partitions),
    stream: (p) => `${ofPartition(p)}messages`,
    group: "persisters",
    deadLetterStream: (p) => `${ofPartition(p)}messages-dead`,
    partitionLease: (p) => `${ofPartition(p)}lease`,
    workers: `${prefix}{meta}:workers`,
    partitionsKey: `${prefix}{meta}:partitions`,
    roomId: roomIdOf,
    conversationOf,
    roomChannel: (roomId) => `${ofRoom(roomId)}room:${roomId}`,
    userChannel: (username) => `${ofUser(username)}user`,
    onlineChannel: (username) => `${ofUser(username)}online`,
    probeChannel: (p, nodeId) => `${ofPartition(p)}probe:${nodeId}`,
    presenceRoom: (roomId) => `${ofRoom(roomId)}presence:${roomId}`,
    presenceIndex: (p) => `${ofPartition(p)}presence-expiry`,
    rateBucket: (username) => `${ofUser(username)}rate`,
    // The client_id is the client's: hashed so no byte of it reaches a key name.
    clientMessage: (from, to, clientId) =>
      `${ofRoom(conversationOf(from, to))}client-msg:${from}:${to}:${createHash("sha256").update(clientId).digest("base64url")}`,
    userConnections: (username) => `${ofUser(username)}connections`,
  };
}
