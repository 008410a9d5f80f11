import { RedisPresence, type MessageEntry, type PresenceEntry } from "@chat/bus";
import { ErrorCode, type AcceptedChatMessage, type ChatMessageEvent } from "@chat/protocol";
import { v7 as uuidv7 } from "uuid";
import type { GatewayCore } from "./core.js";
import type { SessionSocket } from "./socket.js";
import { SubscribedSession } from "./subscribed-session.js";
import { ALL } from "@chat/bus";

/** `/ws/{other}/`: the conversation between `username` and `other`. */
export class ChatSession extends SubscribedSession {
  private readonly roomId: string;
  private readonly roomChannel: string;
  private presence: PresenceEntry | null = null;

  constructor(
    core: GatewayCore,
    socket: SessionSocket,
    username: string,
    private readonly other: string,
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
      member: RedisPresence.member(this.username, this.core.nodeId, this.core.nextSocketSeq()),
    };
    const { first, users } = await this.core.presence.join(entry);
    this.presence = entry;
    this.core.presenceEntries.add(entry);
    if (this.closed) return this.release();
    this.socket.send(JSON.stringify({ type: "online_user_list", users }));
    if (first) await this.core.publish(this.roomChannel, [JSON.stringify({ type: "user_join", user: this.username })]);
  }

  protected release(): void {
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
      return this.sendError(ErrorCode.unavailable, "message not accepted: the cluster's Redis is unreachable", frame.client_id);
    }
    const id = uuidv7();
    const dateAdded = new Date().toISOString();
    const event: ChatMessageEvent = {
      type: "chat_message",
      id,
      message: frame.message,
      multimedia_url: frame.multimedia_url ?? null,
      date_added: dateAdded,
      from_user: { username: this.username },
      to_user: { username: this.other },
      room: this.other,
    };
    if (frame.client_id !== undefined) event.client_id = frame.client_id;
    const entry: MessageEntry = {
      kind: "message",
      id,
      from: this.username,
      to: this.other,
      message: frame.message,
      multimedia_url: event.multimedia_url,
      date_added: dateAdded,
    };
    if (frame.file_identifier !== undefined) entry.file_identifier = frame.file_identifier;
    if (frame.multimedia_url_expiration !== undefined) entry.multimedia_url_expiration = frame.multimedia_url_expiration;
    if (frame.client_id !== undefined) entry.client_id = frame.client_id;
    this.core.stream.appendAndPublish(entry, this.roomChannel, this.core.nodeId, JSON.stringify(event)).then(
      (streamId) => {
        this.core.metrics.messagesReceived.inc();
        this.core.log.debug({ id, streamId, user: this.username, client_id: frame.client_id }, "message accepted");
      },
      (err: unknown) => {
        this.core.log.warn({ err, user: this.username, client_id: frame.client_id }, "message refused by redis");
        if (!this.closed) this.sendError(ErrorCode.unavailable, "message not accepted: the cluster's Redis refused it", frame.client_id);
      },
    );
  }

  private markRead(): void {
    if (!this.core.redisReady) return this.sendError(ErrorCode.unavailable, "read not recorded: the cluster's Redis is unreachable");
    this.core.stream.appendAndPublish({ kind: "read", reader: this.username, other: this.other }).then(() => this.core.metrics.readsReceived.inc(), (err: unknown) => {
      this.core.log.warn({ err, user: this.username }, "read receipt refused by redis");
      if (!this.closed) this.sendError(ErrorCode.unavailable, "read not recorded: the cluster's Redis refused it");
    });
  }
}
