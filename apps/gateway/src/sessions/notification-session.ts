import { ALL, conversationTarget } from "@chat/bus";
import { ErrorCode, clientIdOf } from "@chat/protocol";
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

  protected async greet(): Promise<void> {
    if (this.other === undefined) {
      const total = await this.core.unread.total(this.username);
      this.socket.send(JSON.stringify({ type: "unread_count", unread_count: total }));
    } else {
      const count = await this.core.unread.from(this.username, this.other);
      this.socket.send(JSON.stringify({ type: "single_conversation_unread_count", unread_count: count }));
    }
  }

  protected release(): void {}

  receive(text: string): void {
    this.sendError(ErrorCode.unknown_type, "notification sockets accept no client frames", clientIdOf(text));
  }
}
