import type { ConnectUserOptions, Protocol, UserConnection } from "./protocol.js";
import { openSocket } from "./socket.js";

interface ChatFrame {
  type: string;
  from_user?: { username?: string };
  client_id?: string;
  date_added?: string;
}

/**
 * Our protocol (docs/protocol.md): a chat socket `/ws/{partner}/` per user, ready at its first
 * event (`online_user_list`), and optionally the user's `/ws/notifications/` socket, ready at its
 * first `unread_count`.
 */
export const chatProtocol: Protocol = {
  name: "chat",
  hasNotifications: true,

  async connectUser(o: ConnectUserOptions): Promise<UserConnection> {
    const query = `?token=${encodeURIComponent(o.token)}`;
    const notificationsSocket = o.notifications
      ? openSocket(
          `${o.url}/ws/notifications/${query}`,
          o.timeoutMs,
          (text) => {
            // Only the first frame (unread_count) and new_message_notification frames arrive here.
            if (text.includes('"new_message_notification"')) o.events.notification();
            return true;
          },
          (code) => o.events.closed(code),
        )
      : undefined;
    const chatSocket = openSocket(
      `${o.url}/ws/${encodeURIComponent(o.partner)}/${query}`,
      o.timeoutMs,
      (text) => {
        const frame = JSON.parse(text) as ChatFrame;
        if (frame.type === "chat_message") o.events.message(frame.from_user?.username ?? "", frame.client_id, frame.date_added);
        else if (frame.type === "error") o.events.refused(frame.client_id);
        return true;
      },
      (code) => o.events.closed(code),
    );
    const [chat, notifications] = await Promise.allSettled([chatSocket, notificationsSocket]);
    if (chat.status === "rejected" || notifications.status === "rejected") {
      await Promise.all([chat, notifications].map((r) => (r.status === "fulfilled" ? r.value?.close() : undefined)));
      throw chat.status === "rejected" ? chat.reason : (notifications as PromiseRejectedResult).reason;
    }
    const prefix = `{"type":"chat_message","message":${JSON.stringify(o.text)},"client_id":"`;
    return {
      send(clientId) {
        chat.value.ws.send(`${prefix}${clientId}"}`);
      },
      async close() {
        await Promise.all([chat.value.close(), notifications.value?.close()]);
      },
    };
  },
};
