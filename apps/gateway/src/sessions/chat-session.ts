import {
  ALL,
  encodeEnvelope,
  exceptUserTarget,
  groupConversation,
  presenceMember,
  removedTarget,
  streamIdOf,
  streamPosition,
  uuidv7Time,
  type AcceptResult,
  type MessageEntry,
  type PresenceEntry,
  type ReadEntry,
} from "@chat/bus";
import { CloseCode, ErrorCode, type AcceptedChatMessage, type ChatMessageEvent, type ParsedClientFrame } from "@chat/protocol";
import { v7 as uuidv7 } from "uuid";
import { chatMessageEvent, chatMessageIdOf } from "./chat-message.js";
import { classifyMediaUrl, mediaRefusal } from "./media-reference.js";
import type { GatewayCore } from "./core.js";
import type { SessionSocket } from "./socket.js";
import { SubscribedSession } from "./subscribed-session.js";

/** Stream entries a replay scans at most (the stream only holds what workers have not yet trimmed). */
const REPLAY_STREAM_SCAN = 20_000;
/** Log entries read per page of a replay: what a replay holds of the log at once, besides its own messages. */
const REPLAY_PAGE = 100;
/**
 * How far from the time in a `since` id its log entry is looked for. The id is made by the gateway's
 * clock, the log position by the log's (Redis): this is the clock skew tolerated between them.
 */
const SINCE_WINDOW_MS = 5_000;
/** Log entries of that window looked at, at most, to find a `since` id (the bound of an unknown id's cost). */
const SINCE_SCAN = 1_000;

/** How long an echo sent directly is remembered, so a late copy from the channel is dropped. */
const SENT_DIRECTLY_KEPT_MS = 60_000;

/**
 * How long a group socket's membership, checked at set-up, is trusted for its sends: a removal
 * closes the socket at once over the group's channel, and a send after this long checks again, in
 * case that close was lost (pub/sub is at most once).
 */
const MEMBERSHIP_RECHECK_MS = 10_000;

/** The other side of a chat socket: a user (`/ws/{other}/`) or a group (`/ws/groups/{id}/`). */
export type ChatPeer = { kind: "direct"; other: string } | { kind: "group"; id: string };

/**
 * What a chat socket does with each client frame type, one entry per type of the protocol's parser:
 * a frame type added there does not compile until it has its handler here, and nothing else changes.
 */
type FrameHandlers = { [T in ParsedClientFrame["type"]]: (session: ChatSession, frame: Extract<ParsedClientFrame, { type: T }>) => void };

/** A message to replay, at its position in the conversation's order. */
interface ReplayMessage {
  position: bigint;
  event: ChatMessageEvent;
}

/** `/ws/{other}/`: the conversation between `username` and `other`; `/ws/groups/{id}/`: a group's. */
export class ChatSession extends SubscribedSession {
  private readonly roomId: string;
  /** The entries' recipient: the other user, or the group's conversation id. */
  private readonly to: string;
  /** How frames of this socket name the conversation (`room`): the other user, or the group's id. */
  private readonly room: string;
  /** The group's id; null in a 1:1 conversation. */
  private readonly group: string | null;
  /** When this user's membership of the group was last confirmed (group sockets only). */
  private memberCheckedAt = 0;
  private readonly roomChannel: string;
  /** The message-log partition of the conversation: its shard's health decides whether sends are taken. */
  private readonly partition: number;
  private presence: PresenceEntry | null = null;
  /**
   * Accepted sends whose echo has not come back over the channel yet. The echo is the sender's
   * only acknowledgement; if the node's subscriber drops between the accept and the delivery, the
   * node sends these itself once it is resubscribed (see GatewayCore.flushEchoes).
   */
  /** Accepted sends whose echo has not come over the channel yet, with when they were accepted; created on first use (most sockets of a large node are idle). */
  private pendingEchoes: Map<string, { frame: string; at: number }> | null = null;
  /**
   * Echoes this node sent itself (the channel was late or lost them), with when: if the channel
   * delivers one after all, it is not sent a second time. Created on first use.
   */
  private sentDirectly: Map<string, number> | null = null;
  /** Sends whose accept script has not answered yet. */
  private sending = 0;
  /**
   * With echoOnAccept: this socket's sends whose accept has not answered, and whether the channel
   * already brought their copy (left out: the echo goes out once the accept says the message is on
   * enough replicas). Created on first use.
   */
  private awaitingAccept: Map<string, boolean> | null = null;

  constructor(
    core: GatewayCore,
    socket: SessionSocket,
    username: string,
    peer: ChatPeer,
    /** Last message id the client saw, from `?since=`: replay what it missed. */
    private readonly since?: string,
  ) {
    const to = peer.kind === "direct" ? peer.other : groupConversation(peer.id);
    const roomId = core.names.conversationOf(username, to);
    const roomChannel = core.names.roomChannel(roomId);
    super(core, socket, username, roomChannel, ALL);
    this.to = to;
    this.room = peer.kind === "direct" ? peer.other : peer.id;
    this.group = peer.kind === "group" ? peer.id : null;
    this.roomId = roomId;
    this.roomChannel = roomChannel;
    this.partition = core.stream.partitionOf(roomId);
    if (this.group !== null) this.scopeToGroup(this.group, removedTarget(username));
  }

  protected override admit(): Promise<boolean> {
    // The membership read now is the one later sends go by (MEMBERSHIP_RECHECK_MS).
    this.memberCheckedAt = Date.now();
    return super.admit();
  }

  protected async greet(): Promise<void> {
    const entry: PresenceEntry = {
      roomId: this.roomId,
      user: this.username,
      member: presenceMember(this.username, this.core.nodeId, this.core.nextSocketSeq()),
    };
    const { first, users } = await this.core.presence.join(entry);
    this.presence = entry;
    this.core.presenceEntries.add(entry);
    // Announced before the first event, even when the socket already closed: others may list this
    // user (their online_user_list saw the entry), and the user_leave release() sends needs a
    // matching user_join. Before the first event so that a client that got online_user_list holds a
    // socket whose set-up cannot fail any more (short of catch-up): a publish that stalls in a Redis
    // outage used to close an already-greeted socket with 1013 five seconds later.
    if (first) await this.core.publish(this.roomChannel, [JSON.stringify({ type: "user_join", user: this.username })]);
    if (this.closed) return this.release();
    this.core.addChatSession(this.partition, this);
    this.socket.send(JSON.stringify({ type: "online_user_list", users }));
    if (this.since !== undefined) await this.replay(this.since);
  }

  /**
   * Sends the messages after `since` that this socket missed, oldest first, then `catch_up_end`.
   * Runs while live frames are held back, so nothing live comes before it; live frames the replay
   * already covered are dropped, so nothing arrives twice. The log is read before Postgres: an
   * entry trimmed from the log in between was committed first, so it is in the second read.
   * Bounded: an unknown `since` costs two lookups, and a replay holds at most CHAT_MAX_REPLAY + 1
   * messages of each source and one page of the log.
   */
  private async replay(since: string): Promise<void> {
    const from = await this.positionOfSince(since);
    if (from === null) {
      // The id is neither persisted nor pending here: we cannot tell what the client missed.
      this.socket.send(JSON.stringify({ type: "catch_up_end", recovered: false, count: 0 }));
      return;
    }
    const keep = this.core.maxReplay + 1;
    const { messages: pending, complete } = await this.pendingAfter(from, keep);
    const stored = await this.core.history.latestAfter(this.roomId, from, keep);
    const merged = new Map<string, ReplayMessage>();
    for (const m of stored) merged.set(m.event.id, m);
    for (const m of pending) if (!merged.has(m.event.id)) merged.set(m.event.id, m);
    const all = [...merged.values()].sort((a, b) => (a.position < b.position ? -1 : a.position > b.position ? 1 : 0));
    const recovered = all.length <= this.core.maxReplay && complete;
    const replayed = all.slice(-this.core.maxReplay);
    const ids = new Set<string>();
    const frames: string[] = [];
    for (const m of replayed) {
      ids.add(m.event.id);
      frames.push(JSON.stringify(m.event));
    }
    frames.push(JSON.stringify({ type: "catch_up_end", recovered, count: replayed.length }));
    this.socket.sendAll(frames);
    this.dropHeld((frame) => {
      const id = chatMessageIdOf(frame);
      return id !== undefined && ids.has(id);
    });
  }

  /**
   * The log position of message `since` of this conversation: persisted (Postgres), else still in
   * the log, looked up near the time its UUIDv7 id carries. Null when it is neither (or another
   * conversation's): never a scan of the whole log.
   */
  private async positionOfSince(since: string): Promise<bigint | null> {
    const persisted = await this.core.history.positionOf(since, this.roomId);
    if (persisted !== null) return persisted;
    const at = uuidv7Time(since);
    if (at === null) return null;
    const found = await this.core.stream.findMessage(this.roomId, since, { fromMs: at - SINCE_WINDOW_MS, toMs: at + SINCE_WINDOW_MS, maxEntries: SINCE_SCAN });
    const entry = found?.entry;
    if (found && entry?.kind === "message" && entry.id === since) {
      return this.core.names.conversationOf(entry.from, entry.to) === this.roomId ? streamPosition(found.streamId) : null;
    }
    // Persisted and trimmed from the log between the two lookups: it is in Postgres now.
    return this.core.history.positionOf(since, this.roomId);
  }

  /**
   * The newest `keep` messages of this conversation still in the log after `from`, oldest first,
   * read backwards in pages. `complete` when the read reached `from` (or found `keep`, which already
   * means more were missed than a replay sends).
   */
  private async pendingAfter(from: bigint, keep: number): Promise<{ messages: ReplayMessage[]; complete: boolean }> {
    const newestFirst: ReplayMessage[] = [];
    const after = streamIdOf(from);
    let before: string | null = null;
    for (let scanned = 0; scanned < REPLAY_STREAM_SCAN; ) {
      const page = await this.core.stream.rangeBetween(this.roomId, after, before, REPLAY_PAGE);
      scanned += page.length;
      for (const { streamId, entry } of page) {
        if (entry?.kind !== "message" || this.core.names.conversationOf(entry.from, entry.to) !== this.roomId) continue;
        newestFirst.push({ position: streamPosition(streamId), event: chatMessageEvent(entry) });
        if (newestFirst.length >= keep) return { messages: newestFirst.reverse(), complete: true };
      }
      if (page.length < REPLAY_PAGE) return { messages: newestFirst.reverse(), complete: true };
      before = page.at(-1)!.streamId;
    }
    return { messages: newestFirst.reverse(), complete: false };
  }

  /** Ids delivered before their accept resolved (the channel can beat the script's reply); created on first use. */
  private echoed: Set<string> | null = null;

  protected override delivered(frame: Buffer): void {
    if (!this.pendingEchoes?.size && this.sending === 0) return;
    const id = chatMessageIdOf(frame);
    if (id === undefined) return;
    if (!this.pendingEchoes?.delete(id) && this.sending > 0) (this.echoed ??= new Set()).add(id);
    if (!this.pendingEchoes?.size) {
      this.pendingEchoes = null;
      this.core.awaitingEcho.delete(this);
    }
  }

  private sendSettled(): void {
    this.sending--;
    if (this.sending === 0) this.echoed = null;
  }

  /** Sends the echoes the channel did not deliver; called once the node is resubscribed. */
  flushEchoes(): void {
    this.flushOverdue(Number.POSITIVE_INFINITY);
    this.echoed = null;
  }

  /**
   * Sends the echoes of sends accepted before `acceptedBefore` that the channel has not delivered
   * (the node's subscription on that shard was lost, e.g. a master failed over): the message is
   * accepted, and the echo is the sender's only answer. Returns how many went out.
   */
  flushOverdue(acceptedBefore: number): number {
    const pending = this.pendingEchoes;
    if (!pending) return 0;
    const now = Date.now();
    const frames: string[] = [];
    for (const [id, { frame, at }] of pending) {
      if (at >= acceptedBefore) continue;
      frames.push(frame);
      pending.delete(id);
      (this.sentDirectly ??= new Map()).set(id, now);
    }
    if (this.sentDirectly) for (const [id, at] of this.sentDirectly) if (now - at > SENT_DIRECTLY_KEPT_MS) this.sentDirectly.delete(id);
    if (pending.size === 0) {
      this.pendingEchoes = null;
      this.core.awaitingEcho.delete(this);
    }
    if (frames.length > 0 && !this.closed) this.socket.sendAll(frames);
    return frames.length;
  }

  protected override skips(): boolean {
    return (this.sentDirectly !== null && this.sentDirectly.size > 0) || (this.awaitingAccept !== null && this.awaitingAccept.size > 0);
  }

  protected override skip(frame: Buffer): boolean {
    const id = chatMessageIdOf(frame);
    if (id === undefined) return false;
    if (this.awaitingAccept?.has(id)) {
      this.awaitingAccept.set(id, true);
      return true;
    }
    return this.sentDirectly?.delete(id) ?? false;
  }

  /**
   * The accept of a send of this socket answered (echoOnAccept): its channel copy is left out, now
   * if it came already, else when it comes.
   */
  private acceptAnswered(id: string): void {
    const arrived = this.awaitingAccept?.get(id);
    this.awaitingAccept?.delete(id);
    if (arrived === false) (this.sentDirectly ??= new Map()).set(id, Date.now());
  }

  /** See GatewayCore.resyncPartition. */
  resync(): void {
    if (!this.closed) this.socket.close(CloseCode.resync, "live events may have been missed; reconnect with ?since=");
  }

  protected release(): void {
    this.core.removeChatSession(this.partition, this);
    this.pendingEchoes = null;
    this.core.awaitingEcho.delete(this);
    const entry = this.presence;
    if (!entry) return;
    this.presence = null;
    this.core.presenceEntries.delete(entry);
    const leaving = this.core.presence
      .leave(entry)
      .then(({ last }) =>
        last ? this.core.publish(this.roomChannel, [JSON.stringify({ type: "user_leave", user: this.username })]) : undefined,
      )
      .catch((err: unknown) => {
        // The entry expires by TTL and the sweep of a live node sends user_leave then.
        this.core.log.warn({ err, user: this.username, roomId: this.roomId }, "presence leave failed");
      });
    this.core.track(leaving);
  }

  /** Static, not per socket: idle sockets are most of a node's memory. */
  private static readonly handlers: FrameHandlers = {
    chat_message: (session, frame) => session.sendMessage(frame),
    read_messages: (session) => session.markRead(),
    typing: (session) => session.typing(),
  };

  receive(text: string): void {
    const parsed = this.core.parseFrame(text);
    if (!parsed.ok) return this.sendError(parsed.code, parsed.message, parsed.clientId);
    const handle = ChatSession.handlers[parsed.frame.type] as (session: ChatSession, frame: ParsedClientFrame) => void;
    handle(this, parsed.frame);
  }

  /**
   * Tells the conversation's other chat sockets that this user is typing: one publish on its channel,
   * never stored, never to this user's own sockets, a few per second at most (typing.ts).
   */
  private typing(): void {
    if (this.closed || !this.core.typing.allow(this.username, Date.now())) return;
    const frame = JSON.stringify({ type: "typing", user: this.username, room: this.room });
    this.core.publish(this.roomChannel, [frame], exceptUserTarget(this.username)).catch((err: unknown) => {
      // A hint that the next one replaces: nothing to tell the client.
      this.core.log.debug({ err, user: this.username, roomId: this.roomId }, "typing publish failed");
    });
  }

  /** Sends of this socket waiting behind a media check, so that none overtakes an earlier one; null when none. */
  private checking: Promise<void> | null = null;

  /**
   * Checks the frame's media reference (only http(s) links to public hosts and the sender's own
   * uploads: see media-reference.ts), then accepts it. A check that needs the database holds this
   * socket's later sends behind it, so one socket's messages keep their order.
   */
  private sendMessage(frame: AcceptedChatMessage): void {
    const url = frame.multimedia_url;
    const kind = url === undefined ? null : classifyMediaUrl(url);
    const recheck = this.group !== null && Date.now() - this.memberCheckedAt > MEMBERSHIP_RECHECK_MS;
    const lookup = frame.file_identifier !== undefined || kind?.kind === "own" || recheck;
    if (!lookup && this.checking === null) {
      if (kind?.kind === "refused") return this.refuseMedia(kind.reason, frame);
      return this.acceptMessage(frame);
    }
    const run = async () => {
      if (recheck && !(await this.stillMember())) return;
      const refusal = await mediaRefusal(this.core.media, this.username, url, frame.file_identifier);
      if (this.closed) return;
      if (refusal !== null) return this.refuseMedia(refusal, frame);
      this.acceptMessage(frame);
    };
    const next: Promise<void> = (this.checking ?? Promise.resolve()).then(run).catch((err: unknown) => {
      this.core.log.warn({ err, user: this.username, client_id: frame.client_id }, "media reference check failed");
      if (!this.closed) this.sendError(ErrorCode.unavailable, "message not accepted: its attachment could not be checked", frame.client_id);
    });
    this.checking = next;
    void next.finally(() => {
      if (this.checking === next) this.checking = null;
    });
  }

  /**
   * Whether this user is still in the group, read again (see MEMBERSHIP_RECHECK_MS); when not, the
   * socket is closed with 4003 as the removal's own close would have.
   */
  private async stillMember(): Promise<boolean> {
    if (this.group === null) return true;
    if (Date.now() - this.memberCheckedAt <= MEMBERSHIP_RECHECK_MS) return !this.closed;
    const member = await this.core.groups.isMember(this.group, this.username);
    this.memberCheckedAt = Date.now();
    if (!member && !this.closed) {
      this.core.log.info({ user: this.username, group: this.group }, "send from a removed member: socket closed");
      this.removed();
    }
    return member && !this.closed;
  }

  private refuseMedia(reason: string, frame: AcceptedChatMessage): void {
    this.core.log.info({ user: this.username, client_id: frame.client_id, reason }, "media reference refused");
    this.sendError(ErrorCode.invalid_media_url, `${reason}; nothing was stored`, frame.client_id);
  }

  private acceptMessage(frame: AcceptedChatMessage): void {
    if (!this.core.redisReady) {
      return this.sendError(ErrorCode.unavailable, "message not accepted: the message bus is unreachable", frame.client_id);
    }
    if (!this.core.partitionAvailable(this.partition)) {
      return this.sendError(ErrorCode.unavailable, "message not accepted: this conversation's Redis shard is failing over; retry with the same client_id", frame.client_id);
    }
    const entry: MessageEntry = {
      kind: "message",
      id: uuidv7(),
      from: this.username,
      to: this.to,
      message: frame.message,
      multimedia_url: frame.multimedia_url ?? null,
      date_added: new Date().toISOString(),
    };
    if (frame.file_identifier !== undefined) entry.file_identifier = frame.file_identifier;
    if (frame.multimedia_url_expiration !== undefined) entry.multimedia_url_expiration = frame.multimedia_url_expiration;
    if (frame.client_id !== undefined) entry.client_id = frame.client_id;
    const json = JSON.stringify(chatMessageEvent(entry));
    this.sending++;
    const echoOnAccept = this.core.echoOnAccept;
    if (echoOnAccept) (this.awaitingAccept ??= new Map()).set(entry.id, false);
    this.accept(entry, frame.client_id, json).then(
      (result) => {
        const echoedAlready = this.echoed?.delete(entry.id) ?? false;
        this.sendSettled();
        if (echoOnAccept) this.acceptAnswered(entry.id);
        if (result.kind === "accepted") {
          this.core.metrics.messagesReceived.inc();
          if (echoOnAccept) {
            // On enough replicas now: the echo goes out here (its channel copy is left out).
            if (!this.closed) this.socket.send(json);
          } else if (!this.closed && !echoedAlready) {
            (this.pendingEchoes ??= new Map()).set(entry.id, { frame: json, at: Date.now() });
            this.core.awaitingEcho.add(this);
          }
          this.core.log.debug({ id: entry.id, streamId: result.streamId, user: this.username, client_id: frame.client_id }, "message accepted");
        } else if (result.kind === "duplicate") {
          // A retry of a message already accepted: the original echo, to this socket only.
          this.core.log.info({ user: this.username, client_id: frame.client_id }, "duplicate client_id; original message echoed");
          if (!this.closed) this.socket.send(result.frame);
        } else if (result.kind === "unreplicated") {
          // In the log, and delivered to the conversation's other sockets, but a failover now could
          // lose it: no echo. A retry with the same client_id gets the original back if it survived.
          this.core.metrics.sendsUnreplicated.inc();
          this.core.log.warn({ id: entry.id, user: this.username, client_id: frame.client_id, replicas: result.replicas, wanted: result.wanted }, "message not on enough replicas in time");
          if (!this.closed) {
            this.sendError(ErrorCode.unavailable, `message not confirmed by ${result.wanted} Redis replica(s) in time; retry with the same client_id`, frame.client_id);
          }
        } else {
          this.rateLimited(result.retryAfterMs, frame.client_id);
        }
      },
      (err: unknown) => {
        this.sendSettled();
        if (echoOnAccept) this.acceptAnswered(entry.id);
        this.core.log.warn({ err, user: this.username, client_id: frame.client_id }, "message refused by the bus");
        if (!this.closed) this.sendError(ErrorCode.unavailable, "message not accepted: the message bus refused it", frame.client_id);
      },
    );
  }

  /**
   * The sender's rate limit, then the log's accept (or both in the log's one step, when it enforces
   * the limit itself: a single Redis). Everything goes out on the node's one command connection (per
   * shard, on a cluster) in the order this socket's sends came, so its accepts keep that order.
   */
  private async accept(entry: MessageEntry | ReadEntry, clientId?: string, frame?: string): Promise<AcceptResult> {
    const limiter = this.core.rateLimiter;
    if (limiter) {
      const retryAfterMs = await limiter.take(this.username);
      if (retryAfterMs > 0) return { kind: "rate_limited", retryAfterMs };
    }
    return this.core.stream.accept({
      conversation: this.roomId,
      entry,
      clientId,
      live: frame === undefined ? undefined : { envelope: encodeEnvelope(this.core.nodeId, ALL, [frame]), frame },
    });
  }

  private rateLimited(retryAfterMs: number, clientId?: string): void {
    if (this.closed) return;
    this.sendError(ErrorCode.rate_limited, `too many messages; nothing was stored, retry in ${retryAfterMs} ms`, clientId);
  }

  private markRead(): void {
    if (!this.core.redisReady) return this.sendError(ErrorCode.unavailable, "read not recorded: the cluster's Redis is unreachable");
    if (!this.core.partitionAvailable(this.partition)) return this.sendError(ErrorCode.unavailable, "read not recorded: this conversation's Redis shard is failing over; send it again");
    this.accept({ kind: "read", reader: this.username, other: this.to }).then(
      (result) => {
        if (result.kind === "accepted") this.core.metrics.readsReceived.inc();
        else if (result.kind === "rate_limited") this.rateLimited(result.retryAfterMs);
        else if (result.kind === "unreplicated" && !this.closed) {
          this.sendError(ErrorCode.unavailable, `read not confirmed by ${result.wanted} Redis replica(s) in time; send it again`);
        }
      },
      (err: unknown) => {
        this.core.log.warn({ err, user: this.username }, "read receipt refused by the bus");
        if (!this.closed) this.sendError(ErrorCode.unavailable, "read not recorded: the message bus refused it");
      },
    );
  }
}
