import type { ConnectUserOptions, Protocol, UserConnection } from "./protocol.js";
import { openSocket } from "./socket.js";

interface EventPayload {
  from_user?: { username?: string };
  client_id?: string;
  date_added?: string;
}

/**
 * The Socket.IO 4 baseline's wire (Engine.IO 4 over a WebSocket, no polling), spoken directly so
 * that the generator spends the same CPU per frame against both systems:
 * `0{...}` open, client `40{auth}` connects the main namespace, `40{...}` acknowledges it (ready),
 * `2`/`3` ping/pong, `42["event",data]` events. The baseline server joins each socket to a room
 * named after its user and relays `chat_message` to the recipient's and the sender's rooms.
 */
export const socketIoProtocol: Protocol = {
  name: "socket.io",
  hasNotifications: false,

  async connectUser(o: ConnectUserOptions): Promise<UserConnection> {
    const socket = await openSocket(
      `${o.url}/socket.io/?EIO=4&transport=websocket`,
      o.timeoutMs,
      (text, ws) => {
        switch (text.charCodeAt(0)) {
          case 0x30: // "0": Engine.IO open
            ws.send(`40${JSON.stringify({ token: o.token })}`);
            return false;
          case 0x32: // "2": ping
            ws.send("3");
            return false;
          case 0x34: // "4": Socket.IO packet
            if (text.startsWith("42")) {
              const [name, payload] = JSON.parse(text.slice(2)) as [string, EventPayload];
              if (name === "chat_message") o.events.message(payload.from_user?.username ?? "", payload.client_id, payload.date_added);
              else if (name === "chat_error") o.events.refused(payload.client_id);
              return true;
            }
            if (text.startsWith("44")) {
              ws.close(4001, "connect refused");
              return false;
            }
            return text.startsWith("40");
          default:
            return false;
        }
      },
      (code) => o.events.closed(code),
    );
    const prefix = `42["chat_message",{"to":${JSON.stringify(o.partner)},"message":${JSON.stringify(o.text)},"client_id":"`;
    return {
      send(clientId) {
        socket.ws.send(`${prefix}${clientId}"}]`);
      },
      close: () => socket.close(),
    };
  },
};
