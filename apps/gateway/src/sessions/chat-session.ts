import { ALL, encodeEnvelope, presenceMember, streamIdOf, streamPosition, type MessageEntry, type PresenceEntry, type ReadEntry } from "@chat/bus";
import { ErrorCode, type AcceptedChatMessage, type ChatMessageEvent } from "@chat/protocol";
import { v7 as uuidv7 } from "uuid";
import { chatMessageEvent, chatMessageIdOf } from "./chat-message.js";
import type { GatewayCore } from "./core.js";
import type { SessionSocket } from "./socket.js";
import { SubscribedSession } from "./subscribed-session.js";

/** Stream entries a replay scans at most (the stream only holds what workers have not yet trimmed). */
const REPLAY_STREAM_SCAN = 20_000;

/** `/ws/{other}/`: the conversation between `username` and `other`. */
export class ChatSession extends SubscribedSession {
  private readonly roomId: string;
  private readonly roomChannel: string;
  private presence: PresenceEntry | null = null;
  /**
   * Accepted sends whose echo has not come back over the channel yet. The echo is the sender's
   * only acknowledgement; if the node's subscriber drops between the accept and the delivery, the
   * node sends these itself once it is resubscribed (see GatewayCore.flushEchoes).
   */
  /** Accepted sends whose echo has not come over the channel yet; created on first use (most sockets of a large node are idle). */
  private pendingEchoes: Map<string, string> | null = null;
  /** Sends whose accept script has not answered yet. */
  private sending = 0;

  constructor(
    core: GatewayCore,
    socket: SessionSocket,
    username: string,
    private readonly other: string,
    /** Last message id the client saw, from `?since=`: replay what it missed. */
    private readonly since?: string,
  ) {
    const roomId = core.names.roomId(username, other);
    const roomChannel = core.names.roomChannel(roomId);
    super(core, socket, username, roomChannel, ALL);
    this.roomId = roomId;
    this.roomChannel = roomChannel;
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
    if (this.closed) {
      // Others may already list this user (their online_user_list saw the entry): announce the join
      // so that the user_leave release() sends next has a matching user_join.
      if (first) await this.core.publish(this.roomChannel, [JSON.stringify({ type: "user_join", user: this.username })]);
      return this.release();
    }
    this.socket.send(JSON.stringify({ type: "online_user_list", users }));
    if (this.since !== undefined) await this.replay(this.since);
    if (first) await this.core.publish(this.roomChannel, [JSON.stringify({ type: "user_join", user: this.username })]);
  }

  /**
   * Sends the messages after `since` that this socket missed, oldest first, then `catch_up_end`.
   * Runs while live frames are held back, so nothing live comes before it; live frames the replay
   * already covered are dropped, so nothing arrives twice. The stream is read before Postgres: an
   * entry trimmed from the stream in between was committed first, so it is in the second read.
   */
  private async replay(since: string): Promise<void> {
    const sincePosition = await this.core.history.positionOf(since, this.roomId);
    const pending = await this.core.stream.rangeAfter(sincePosition === null ? "-" : streamIdOf(sincePosition), REPLAY_STREAM_SCAN);
    let from = sincePosition;
    const fromStream = new Map<string, { position: bigint; event: ChatMessageEvent }>();
    for (const { streamId, entry } of pending) {
      if (entry?.kind !== "message" || this.core.names.roomId(entry.from, entry.to) !== this.roomId) continue;
      const position = streamPosition(streamId);
      if (entry.id === since) from = position;
      fromStream.set(entry.id, { position, event: chatMessageEvent(entry) });
    }
    if (from === null) {
      // The id is neither persisted nor pending here: we cannot tell what the client missed.
      this.socket.send(JSON.stringify({ type: "catch_up_end", recovered: false, count: 0 }));
      return;
    }
    const stored = await this.core.history.latestAfter(this.roomId, from, this.core.maxReplay + 1);
    const merged = new Map<string, { position: bigint; event: ChatMessageEvent }>();
    for (const m of stored) merged.set(m.event.id, m);
    for (const [id, m] of fromStream) if (m.position > from && !merged.has(id)) merged.set(id, m);
    const all = [...merged.values()].sort((a, b) => (a.position < b.position ? -1 : a.position > b.position ? 1 : 0));
    const recovered = all.length <= this.core.maxReplay && pending.length < REPLAY_STREAM_SCAN;
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
    if (this.pendingEchoes) this.socket.sendAll([...this.pendingEchoes.values()]);
    this.pendingEchoes = null;
    this.echoed = null;
  }

  protected release(): void {
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

  receive(text: string): void {
    const parsed = this.core.parseFrame(text);
    if (!parsed.ok) return this.sendError(parsed.code, parsed.message, parsed.clientId);
    if (parsed.frame.type === "read_messages") return this.markRead();
    this.sendMessage(parsed.frame);
  }

  private sendMessage(frame: AcceptedChatMessage): void {
    if (!this.core.redisReady) {
      return this.sendError(ErrorCode.unavailable, "message not accepted: the message bus is unreachable", frame.client_id);
    }
    const entry: MessageEntry = {
      kind: "message",
      id: uuidv7(),
      from: this.username,
      to: this.other,
      message: frame.message,
      multimedia_url: frame.multimedia_url ?? null,
      date_added: new Date().toISOString(),
    };
    if (frame.file_identifier !== undefined) entry.file_identifier = frame.file_identifier;
    if (frame.multimedia_url_expiration !== undefined) entry.multimedia_url_expiration = frame.multimedia_url_expiration;
    if (frame.client_id !== undefined) entry.client_id = frame.client_id;
    const json = JSON.stringify(chatMessageEvent(entry));
    this.sending++;
    this.accept(entry, frame.client_id, json).then(
      (result) => {
        const echoedAlready = this.echoed?.delete(entry.id) ?? false;
        this.sendSettled();
        if (result.kind === "accepted") {
          this.core.metrics.messagesReceived.inc();
          if (!this.closed && !echoedAlready) {
            (this.pendingEchoes ??= new Map()).set(entry.id, json);
            this.core.awaitingEcho.add(this);
          }
          this.core.log.debug({ id: entry.id, streamId: result.streamId, user: this.username, client_id: frame.client_id }, "message accepted");
        } else if (result.kind === "duplicate") {
          // A retry of a message already accepted: the original echo, to this socket only.
          this.core.log.info({ user: this.username, client_id: frame.client_id }, "duplicate client_id; original message echoed");
          if (!this.closed) this.socket.send(result.frame);
        } else {
          this.rateLimited(result.retryAfterMs, frame.client_id);
        }
      },
      (err: unknown) => {
        this.sendSettled();
        this.core.log.warn({ err, user: this.username, client_id: frame.client_id }, "message refused by the bus");
        if (!this.closed) this.sendError(ErrorCode.unavailable, "message not accepted: the message bus refused it", frame.client_id);
      },
    );
  }

  private accept(entry: MessageEntry | ReadEntry, clientId?: string, frame?: string) {
    const { names, limits } = this.core;
    return this.core.stream.accept(entry, {
      rateKey: names.rateBucket(this.username),
      ratePerSecond: limits.ratePerSecond,
      burst: limits.burst,
      idempotencyKey: clientId === undefined ? undefined : names.clientMessage(this.username, this.other, clientId),
      idempotencyTtlSeconds: limits.idempotencyTtlSeconds,
      ...(frame === undefined ? {} : { channel: this.roomChannel, envelope: encodeEnvelope(this.core.nodeId, ALL, [frame]), frame }),
    });
  }

  private rateLimited(retryAfterMs: number, clientId?: string): void {
    if (this.closed) return;
    this.sendError(ErrorCode.rate_limited, `too many messages; nothing was stored, retry in ${retryAfterMs} ms`, clientId);
  }

  private markRead(): void {
    if (!this.core.redisReady) return this.sendError(ErrorCode.unavailable, "read not recorded: the cluster's Redis is unreachable");
    this.accept({ kind: "read", reader: this.username, other: this.other }).then(
      (result) => {
        if (result.kind === "accepted") this.core.metrics.readsReceived.inc();
        else if (result.kind === "rate_limited") this.rateLimited(result.retryAfterMs);
      },
      (err: unknown) => {
        this.core.log.warn({ err, user: this.username }, "read receipt refused by the bus");
        if (!this.closed) this.sendError(ErrorCode.unavailable, "read not recorded: the message bus refused it");
      },
    );
  }
}
