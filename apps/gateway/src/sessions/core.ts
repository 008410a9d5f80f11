import {
  ALL,
  SubscriptionRouter,
  encodeEnvelope,
  type ConnectionCounter,
  type CountedConnection,
  type MessageLog,
  type Presence,
  type PresenceEntry,
  type Publisher,
  type RateLimiter,
  type RedisNames,
} from "@chat/bus";
import { createFrameParser, type ChatMessageEvent, type ParseResult } from "@chat/protocol";
import type { Logger } from "@chat/log";
import type { GatewayMetrics } from "../metrics.js";
import type { MediaReferences } from "./media-reference.js";
import { TypingLimiter } from "./typing.js";

/** Unread counters as the gateway reads them on connect (never per message). */
export interface UnreadCounts {
  total(username: string): Promise<number>;
  from(username: string, other: string): Promise<number>;
}

/** A persisted message of a conversation, as a replay needs it. */
export interface StoredMessage {
  position: bigint;
  event: ChatMessageEvent;
}

/** Conversation history as a catch-up replay reads it (on reconnect only, never per message). */
export interface History {
  /** The stream position of a message of this conversation, or null when it is not persisted (or not this conversation's). */
  positionOf(messageId: string, roomId: string): Promise<bigint | null>;
  /** The newest `limit` messages after `position`, oldest first. */
  latestAfter(roomId: string, position: bigint, limit: number): Promise<StoredMessage[]>;
  /** The partners of the user's `limit` most recent conversations, most recent first. */
  recentPartners(username: string, limit: number): Promise<string[]>;
}

/** Who is in which group (read at a group socket's set-up, and again now and then). */
export interface GroupMembership {
  isMember(groupId: string, username: string): Promise<boolean>;
  /** Which of these pairs are memberships now, as `<group id>\n<username>`. */
  current(pairs: readonly { group: string; user: string }[]): Promise<Set<string>>;
}

/** An open socket of a group (chat or notifications), for the membership re-check. */
export interface GroupSocket {
  readonly group: string;
  readonly username: string;
  /** The user is no longer a member: close with 4003. */
  removed(): void;
}

export interface CoreOptions {
  nodeId: string;
  names: RedisNames;
  /** Must fail at once while disconnected, not queue. */
  publisher: Publisher;
  /** Where accepted sends go; must fail at once while disconnected, not queue. */
  stream: MessageLog;
  router: SubscriptionRouter;
  presence: Presence;
  unread: UnreadCounts;
  history: History;
  groups: GroupMembership;
  /** Uploads a chat_message may reference (checked before it is accepted). */
  media: MediaReferences;
  /** Most messages a reconnecting socket is replayed. */
  maxReplay: number;
  /** CHAT_PRESENCE_PARTNERS: how many recent partners an all-conversations socket hears come and go. */
  presencePartners: number;
  /** Open sockets per user, cluster-wide: counted here, refreshed with presence; who is online. */
  connections: ConnectionCounter;
  maxMessageLength: number;
  /** Each user's send budget, cluster-wide; null when unlimited. */
  rateLimiter: RateLimiter | null;
  /** The sender's echo goes out when its accept answers, not from the channel (see GatewayParts.echoOnAccept). */
  echoOnAccept: boolean;
  /** Whether the bus serves: commands, and a subscriber with every channel in place. */
  redisReady: () => boolean;
  log: Logger;
  metrics: GatewayMetrics;
}

/**
 * What every session of this node shares. Holds no state another node needs: presence lives in
 * the bus, so this node may die at any time and its entries expire.
 */
export class GatewayCore {
  readonly nodeId: string;
  readonly names: RedisNames;
  readonly publisher: Publisher;
  readonly router: SubscriptionRouter;
  readonly presence: Presence;
  readonly stream: MessageLog;
  readonly unread: UnreadCounts;
  readonly history: History;
  readonly groups: GroupMembership;
  readonly media: MediaReferences;
  readonly maxReplay: number;
  readonly presencePartners: number;
  readonly connections: ConnectionCounter;
  readonly rateLimiter: RateLimiter | null;
  readonly echoOnAccept: boolean;
  private readonly isRedisReady: () => boolean;
  readonly parseFrame: (text: string) => ParseResult;
  readonly log: Logger;
  readonly metrics: GatewayMetrics;
  /** Presence entries of this node's open chat sockets, refreshed periodically. */
  readonly presenceEntries = new Set<PresenceEntry>();
  /** Counted sockets of this node (per-user limit), refreshed with presence. */
  readonly countedConnections = new Set<CountedConnection>();
  /** Whether sends to a partition's conversations are taken (see PartitionProbe); every one without a probe. */
  partitionAvailable: (partition: number) => boolean = () => true;
  /** This node's notification sessions (both kinds), for resyncNotifications. */
  readonly notificationSessions = new Set<{ readonly userChannel: string; resync(): void }>();
  /** This node's chat sessions by partition of their conversation, for resyncPartition. */
  private readonly chatSessions = new Map<number, Set<{ resync(): void }>>();
  /** Chat sessions with accepted sends whose echo has not arrived over the channel yet. */
  readonly awaitingEcho = new Set<{ flushEchoes(): void; flushOverdue(acceptedBefore: number): number }>();
  /** Presence removals in flight, awaited before a draining node disconnects from Redis. */
  readonly pendingReleases = new Set<Promise<unknown>>();
  /** This node's open group sockets, re-checked against the membership (startMembershipSweep). */
  readonly groupSockets = new Set<GroupSocket>();
  /** Typing frames per user on this node (see typing.ts). */
  readonly typing = new TypingLimiter();
  private socketSeq = 0;
  private timers: NodeJS.Timeout[] = [];

  constructor(options: CoreOptions) {
    this.nodeId = options.nodeId;
    this.names = options.names;
    this.publisher = options.publisher;
    this.router = options.router;
    this.presence = options.presence;
    this.stream = options.stream;
    this.unread = options.unread;
    this.history = options.history;
    this.groups = options.groups;
    this.media = options.media;
    this.maxReplay = options.maxReplay;
    this.presencePartners = options.presencePartners;
    this.connections = options.connections;
    this.rateLimiter = options.rateLimiter;
    this.echoOnAccept = options.echoOnAccept;
    this.isRedisReady = options.redisReady;
    this.parseFrame = createFrameParser({ maxMessageLength: options.maxMessageLength });
    this.log = options.log;
    this.metrics = options.metrics;
  }

  /** Keeps track of a background bus operation that must finish before shutdown. */
  track(work: Promise<unknown>): void {
    this.pendingReleases.add(work);
    void work.finally(() => this.pendingReleases.delete(work));
  }

  nextSocketSeq(): number {
    return ++this.socketSeq;
  }

  /**
   * True while this node can accept and deliver: commands go through and every channel it needs is
   * subscribed. A send is accepted only then, because the sender's echo comes back over pub/sub.
   */
  get redisReady(): boolean {
    return this.isRedisReady();
  }

  /** Once resubscribed after a subscriber outage: echoes the channel did not deliver go out directly. */
  flushEchoes(): void {
    const sessions = [...this.awaitingEcho];
    this.awaitingEcho.clear();
    for (const s of sessions) s.flushEchoes();
    if (sessions.length > 0) this.log.info({ sessions: sessions.length }, "echoes sent after resubscribing");
  }

  /**
   * Every quarter of `deadlineMs`, sends directly the echoes the channel has not delivered within
   * `deadlineMs` of their accept, and then calls `deliveryLost` (at most once per deadline). A lost
   * echo means this node's subscription on some shard is gone while its commands work (a master
   * failed over, and the sharded subscriber has not followed yet), so every sender gets its answer.
   */
  startEchoWatch(deadlineMs: number, deliveryLost: () => void): void {
    let lastLost = 0;
    const watch = setInterval(() => {
      if (this.awaitingEcho.size === 0) return;
      const now = Date.now();
      let overdue = 0;
      for (const s of [...this.awaitingEcho]) overdue += s.flushOverdue(now - deadlineMs);
      if (overdue === 0) return;
      this.metrics.echoesOverdue.inc(overdue);
      this.log.warn({ echoes: overdue, deadlineMs }, "echoes overdue on their channel: sent directly; subscribing every channel again");
      if (now - lastLost >= deadlineMs) {
        lastLost = now;
        deliveryLost();
      }
    }, Math.max(50, Math.floor(deadlineMs / 4)));
    watch.unref();
    this.timers.push(watch);
  }

  /**
   * After Redis came back (possibly empty, if it keeps nothing on disk): put this node's presence
   * entries back, announcing users who thereby join again.
   */
  async rejoinPresence(): Promise<void> {
    for (const entry of [...this.presenceEntries]) {
      try {
        const { first } = await this.presence.join(entry);
        if (first) await this.publish(this.names.roomChannel(entry.roomId), [JSON.stringify({ type: "user_join", user: entry.user })]);
      } catch (err) {
        this.log.warn({ err, roomId: entry.roomId, user: entry.user }, "presence rejoin failed");
      }
    }
  }

  /** Publishes server frames to every socket of a room or user channel, on every node. */
  async publish(channel: string, frames: readonly string[], target: string = ALL): Promise<void> {
    await this.publisher.publish(channel, encodeEnvelope(this.nodeId, target, frames));
  }

  /** Starts presence upkeep: refresh our entries every TTL/3, sweep dead nodes' entries every few seconds. */
  startPresenceUpkeep(): void {
    const ttl = this.presence.ttlMs;
    const refresh = setInterval(() => {
      if (!this.redisReady) return;
      if (this.presenceEntries.size > 0) {
        this.presence.refresh([...this.presenceEntries]).catch((err: unknown) => this.log.warn({ err }, "presence refresh failed"));
      }
      if (this.countedConnections.size > 0) {
        this.connections.refresh(this.countedConnections).catch((err: unknown) => this.log.warn({ err }, "connection count refresh failed"));
      }
    }, Math.floor(ttl / 3));
    const sweep = setInterval(() => {
      this.typing.sweep(Date.now());
      void this.sweepPresence();
    }, Math.min(5000, Math.floor(ttl / 6)));
    refresh.unref();
    sweep.unref();
    this.timers.push(refresh, sweep);
  }

  /**
   * Every `intervalMs`, one query for all of this node's group sockets: a socket whose user is no
   * longer a member is closed with 4003. A removal closes its sockets at once over pub/sub, which is
   * at most once (a Redis failover can lose it): this bounds how long such a socket keeps receiving.
   */
  startMembershipSweep(intervalMs: number): void {
    let running = false;
    const sweep = setInterval(() => {
      if (running || this.groupSockets.size === 0) return;
      running = true;
      const sockets = [...this.groupSockets];
      const pairs = new Map<string, { group: string; user: string }>();
      for (const s of sockets) pairs.set(`${s.group}\n${s.username}`, { group: s.group, user: s.username });
      this.groups
        .current([...pairs.values()])
        .then((members) => {
          const gone = sockets.filter((s) => this.groupSockets.has(s) && !members.has(`${s.group}\n${s.username}`));
          if (gone.length > 0) this.log.info({ sockets: gone.length }, "group sockets of removed members closed by the membership re-check");
          for (const s of gone) s.removed();
        })
        .catch((err: unknown) => this.log.warn({ err }, "group membership re-check failed"))
        .finally(() => (running = false));
    }, intervalMs);
    sweep.unref();
    this.timers.push(sweep);
  }

  addChatSession(partition: number, session: { resync(): void }): void {
    const sessions = this.chatSessions.get(partition);
    if (sessions) sessions.add(session);
    else this.chatSessions.set(partition, new Set([session]));
  }

  removeChatSession(partition: number, session: { resync(): void }): void {
    const sessions = this.chatSessions.get(partition);
    if (sessions?.delete(session) && sessions.size === 0) this.chatSessions.delete(partition);
  }

  /**
   * A partition's subscriptions were lost for a while: its chat sockets may have missed live
   * messages, so each is closed with 4002 and its client reconnects with `?since=` to catch up.
   */
  resyncPartition(partition: number): void {
    const sessions = [...(this.chatSessions.get(partition) ?? [])];
    if (sessions.length === 0) return;
    this.metrics.resyncs.inc(sessions.length);
    this.log.warn({ partition, sockets: sessions.length }, "partition's subscriptions were lost for a while; its chat sockets reconnect to catch up");
    for (const s of sessions) s.resync();
  }

  /**
   * The shard serving some users' channels failed over or moved: notifications published there
   * meanwhile (new unread counts) were lost for this node's sockets. Each notification socket of
   * those users is closed with 4002; its client reconnects and gets the counts from Postgres.
   */
  resyncNotifications(affected: (userChannel: string) => boolean): void {
    const sessions = [...this.notificationSessions].filter((s) => affected(s.userChannel));
    if (sessions.length === 0) return;
    this.metrics.resyncs.inc(sessions.length);
    this.log.warn({ sockets: sessions.length }, "user channels' shard failed over or moved; their notification sockets reconnect for fresh counts");
    for (const s of sessions) s.resync();
  }

  stopPresenceUpkeep(): void {
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
  }

  private async sweepPresence(): Promise<void> {
    if (!this.redisReady) return;
    try {
      const left = await this.presence.sweepExpired();
      for (const { roomId, user } of left) {
        this.log.info({ roomId, user }, "presence expired");
        await this.publish(this.names.roomChannel(roomId), [JSON.stringify({ type: "user_leave", user })]);
      }
    } catch (err) {
      this.log.warn({ err }, "presence sweep failed");
    }
  }
}
