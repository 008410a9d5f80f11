import { Counter, Rate, Trend } from "k6/metrics";
import { clearTimeout, setTimeout } from "k6/timers";
import { WebSocket } from "k6/websockets";
import { connectTimeoutMs, runId } from "./config.js";
import { FIRST_EVENT, chatPath, conversationNotificationsPath, notificationsPath, parseServerFrame, socketUrl, username } from "./frames.js";
import { tokenFor } from "./token.js";

/** From opening the socket to its first event (upgrade, auth, subscriptions, presence, counts). */
export const connectToFirstEvent = new Trend("churn_connect_to_first_event", true);
/** Per connection: true when it failed to open or gave no first event in time. */
export const connectFailed = new Rate("churn_connect_failed");
/** Connections the server closed while the client held them (1001 during a drain, 1013, ...). */
export const serverClosed = new Counter("churn_server_closed");

/**
 * Opens one socket for a random user of a small pool (so that presence joins and leaves fan out to
 * the other users of the pool), waits for its first event, holds it, closes it.
 * @param {{ base: string, poolSize: number, holdMinMs: number, holdMaxMs: number }} o
 */
export function churnConnection(o) {
  const pick = () => Math.floor(Math.random() * o.poolSize);
  const me = pick();
  let other = pick();
  if (other === me) other = (me + 1) % o.poolSize;
  const user = (/** @type {number} */ i) => username(runId, 0, i, "pool");
  const roll = Math.random();
  const [endpoint, path, first] =
    roll < 0.7
      ? ["chat", chatPath(user(other)), FIRST_EVENT.chat]
      : roll < 0.85
        ? ["notifications", notificationsPath(), FIRST_EVENT.notifications]
        : ["conversation-notifications", conversationNotificationsPath(user(other)), FIRST_EVENT.conversationNotifications];

  const openedAt = Date.now();
  const ws = new WebSocket(socketUrl(o.base, path, tokenFor(user(me))), null, { tags: { endpoint } });
  let settled = false;
  let closing = false;
  /** @type {number[]} */
  const timeouts = [];
  /** @param {boolean} failed */
  const settle = (failed) => {
    if (settled) return;
    settled = true;
    connectFailed.add(failed);
  };
  ws.addEventListener("message", (e) => {
    if (settled) return;
    const event = parseServerFrame(/** @type {import("k6/websockets").MessageEvent} */ (e).data);
    if (event?.type !== first) {
      settle(true);
      closing = true;
      ws.close(1000);
      return;
    }
    connectToFirstEvent.add(Date.now() - openedAt);
    settle(false);
    timeouts.push(
      setTimeout(() => {
        closing = true;
        ws.close(1000);
      }, o.holdMinMs + Math.random() * Math.max(0, o.holdMaxMs - o.holdMinMs)),
    );
  });
  ws.addEventListener("close", () => {
    if (!settled) settle(true);
    else if (!closing) serverClosed.add(1);
    for (const t of timeouts) clearTimeout(t);
  });
  ws.addEventListener("error", () => settle(true));
  timeouts.push(
    setTimeout(() => {
      if (settled) return;
      settle(true);
      closing = true;
      ws.close(1000);
    }, connectTimeoutMs),
  );
}
