import { ALL, conversationTarget } from "@chat/bus";
import { CloseCode, ErrorCode, clientIdOf } from "@chat/protocol";
import type { GatewayCore } from "./core.js";
import type { SessionSocket } from "./socket.js";
import { SubscribedSession } from "./subscribed-session.js";

/**
 * `/ws/notifications/` (other undefined: every conversation) or `/ws/notifications/{other}/`
 * (one conversation). Both listen to the user's channel; the envelope target picks which.
 */
export class NotificationSession extends SubscribedSession {
  constructor(
    core: GatewayCore,
    socket: SessionSocket,
    username: string,
    private readonly other: string | undefined,
  ) {
    super(core, socket, username, core.names.userChannel(username), other === undefined ? ALL : conversationTarget(other));
  }

  /** The user's channel, which GatewayCore.resyncNotifications goes by. */
  get userChannel(): string {
    return this.core.names.userChannel(this.username);
  }

  /** See GatewayCore.resyncNotifications: the client reconnects and gets the counts as they are. */
  resync(): void {
    if (!this.closed) this.socket.close(CloseCode.resync, "notifications may have been missed; reconnect");
  }

  protected async greet(): Promise<void> {
    // Listed before the counts are read: a resync that comes meanwhile closes this socket too.
    this.core.notificationSessions.add(this);
    if (this.other === undefined) {
      const total = await this.core.unread.total(this.username);
      this.socket.send(JSON.stringify({ type: "unread_count", unread_count: total }));
    } else {
      const count = await this.core.unread.from(this.username, this.other);
      this.socket.send(JSON.stringify({ type: "single_conversation_unread_count", unread_count: count }));
    }
  }

  protected release(): void {
    this.core.notificationSessions.delete(this);
  }

  receive(text: string): void {
    this.sendError(ErrorCode.unknown_type, "notification sockets accept no client frames", clientIdOf(text));
  }
}
