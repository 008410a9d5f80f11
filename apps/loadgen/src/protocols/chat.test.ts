import { once } from "node:events";
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { WebSocketServer } from "ws";
import { chatProtocol } from "./chat.js";
import type { ConnectUserOptions } from "./protocol.js";

// A WebSocket server on loopback that drops the first `drops` notification sockets right after the
// upgrade (no close frame: the client sees 1006), as the gateway rarely does to a fresh socket.

let server: WebSocketServer | null = null;
afterEach(async () => {
  server?.close();
  server = null;
});

async function start(drops: number): Promise<{ url: string; notificationUpgrades: () => number }> {
  let upgrades = 0;
  server = new WebSocketServer({ host: "127.0.0.1", port: 0 });
  server.on("connection", (ws, req) => {
    if (req.url?.startsWith("/ws/notifications/")) {
      if (++upgrades <= drops) return void (ws as unknown as { _socket: { destroy(): void } })._socket.destroy();
      ws.send(JSON.stringify({ type: "unread_count", unread_count: 0 }));
    } else {
      ws.send(JSON.stringify({ type: "online_user_list", users: ["alice"] }));
    }
  });
  await once(server, "listening");
  return { url: `ws://127.0.0.1:${(server.address() as AddressInfo).port}`, notificationUpgrades: () => upgrades };
}

const options = (url: string, closes: number[]): ConnectUserOptions => ({
  url,
  username: "alice",
  partner: "bob",
  token: "t",
  text: "hi",
  notifications: true,
  timeoutMs: 5000,
  events: { message() {}, notification() {}, refused() {}, closed: (code) => void closes.push(code) },
});

describe("chat protocol: a socket dropped before its first event", () => {
  it("is opened once more, as clients do, and the user connects", async () => {
    const { url, notificationUpgrades } = await start(1);
    const closes: number[] = [];
    const user = await chatProtocol.connectUser(options(url, closes));
    expect(notificationUpgrades()).toBe(2);
    expect(closes).toEqual([]);
    await user.close();
  });

  it("fails the user when it is dropped again", async () => {
    const { url, notificationUpgrades } = await start(2);
    await expect(chatProtocol.connectUser(options(url, []))).rejects.toThrow(/closed \(1006\) before it was ready/);
    expect(notificationUpgrades()).toBe(2);
  });
});
