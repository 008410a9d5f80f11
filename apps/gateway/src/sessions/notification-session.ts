import { ALL, conversationTarget, groupIdOf, isGroupConversation, presenceFrame, removedTarget, type Envelope } from "@chat/bus";
import { CloseCode, ErrorCode, clientIdOf } from "@chat/protocol";
import type { GatewayCore } from "./core.js";
import type { SessionSocket } from "./socket.js";
import { SubscribedSession } from "./subscribed-session.js";

/** The envelope target prefix of one conversation's notifications (conversationTarget). */
const CONVERSATION_TARGET = conversationTarget("");

/**
 * `/ws/notifications/` (other undefined: every conversation), `/ws/notifications/{other}/` (one
 * conversation) or `/ws/notifications/groups/{id}/` (one group: other is its conversation id). All
 * listen to the user's channel; the envelope target picks which.
 */
export class NotificationSession extends SubscribedSession {
  /**
   * The partners whose online channel this socket listens to, most recent first (all-conversations
   * only): the user's most recent conversations when it opened, then each new sender. Null on the
   * sockets without presence, most of them: nothing allocated per idle socket.
   */
  private watched: string[] | null = null;
  private watching = false;
  /** Whether this socket tells its partners' presence: `?presence=1` on /ws/notifications/, and partners to watch. */
  private readonly presence: boolean;

  constructor(
    core: GatewayCore,
    socket: SessionSocket,
    username: string,
    private readonly other: string | undefined,
    /** `?presence=1`: the partners' presence events (all-conversations only). */
    presence = false,
  ) {
    super(core, socket, username, core.names.userChannel(username), other === undefined ? ALL : conversationTarget(other));
    this.presence = presence && other === undefined && core.presencePartners > 0;
    const group = other === undefined ? null : groupIdOf(other);
    if (group !== null) this.scopeToGroup(group, removedTarget(other!));
  }

  /** The user's channel, which GatewayCore.resyncNotifications goes by. */
  get userChannel(): string {
    return this.channel;
  }

  /** See GatewayCore.resyncNotifications: the client reconnects and gets the counts as they are. */
  resync(): void {
    if (!this.closed) this.socket.close(CloseCode.resync, "notifications may have been missed; reconnect");
  }

  protected async greet(): Promise<void> {
    // Listed before the counts are read: a resync that comes meanwhile closes this socket too.
    this.core.notificationSessions.add(this);
    if (this.other === undefined) {
      const partners = await this.watchPartners();
      const [total, online] = await Promise.all([this.core.unread.total(this.username), this.core.connections.online(partners)]);
      this.socket.send(JSON.stringify({ type: "unread_count", unread_count: total }));
      // Their state now; a change since the subscription comes after it, among the held frames.
      for (const user of partners) this.socket.send(presenceFrame(user, online.has(user)));
      // From now on a new sender is watched too (after the first events, which come first).
      this.watching = this.presence;
    } else {
      const count = await this.core.unread.from(this.username, this.other);
      this.socket.send(JSON.stringify({ type: "single_conversation_unread_count", unread_count: count }));
    }
  }

  /**
   * Subscribes this socket to the online channels of the partners of the user's most recent
   * conversations (CHAT_PRESENCE_PARTNERS of them): bounded work per socket whatever the number of
   * conversations, and one announcement per change of a user whatever the number of listeners.
   */
  private async watchPartners(): Promise<string[]> {
    if (!this.presence) return [];
    const partners = await this.core.history.recentPartners(this.username, this.core.presencePartners);
    if (this.closed) return [];
    this.watched = [...partners];
    await Promise.all(partners.map((user) => this.core.router.add(this.core.names.onlineChannel(user), this)));
    return partners;
  }

  override deliver(envelope: Envelope): void {
    // A message's notifications name its sender: one not watched yet (a conversation newer than this
    // socket) is watched from now on, in place of the least recent.
    if (this.watching && envelope.target.startsWith(CONVERSATION_TARGET)) {
      const other = envelope.target.slice(CONVERSATION_TARGET.length);
      // A group's members are not partners whose presence the list shows.
      if (!isGroupConversation(other)) this.watchNewPartner(other);
    }
    super.deliver(envelope);
  }

  private watchNewPartner(user: string): void {
    const watched = this.watched;
    if (this.closed || watched === null || watched.includes(user)) return;
    watched.unshift(user);
    const added = this.core.router.add(this.core.names.onlineChannel(user), this);
    if (watched.length > this.core.presencePartners) this.core.router.remove(this.core.names.onlineChannel(watched.pop()!), this);
    void (async () => {
      await added;
      const online = await this.core.connections.online([user]);
      if (!this.closed && watched.includes(user)) this.socket.send(presenceFrame(user, online.has(user)));
    })().catch((err: unknown) => this.core.log.warn({ err, user: this.username, partner: user }, "watching a new partner's presence failed"));
  }

  protected release(): void {
    this.core.notificationSessions.delete(this);
    for (const user of this.watched ?? []) this.core.router.remove(this.core.names.onlineChannel(user), this);
    this.watched = null;
  }

  receive(text: string): void {
    this.sendError(ErrorCode.unknown_type, "notification sockets accept no client frames", clientIdOf(text));
  }
}
