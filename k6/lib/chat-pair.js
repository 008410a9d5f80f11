import exec from "k6/execution";
import { Counter, Rate, Trend } from "k6/metrics";
import { clearInterval, clearTimeout, setInterval, setTimeout } from "k6/timers";
import { WebSocket } from "k6/websockets";
import { connectTimeoutMs, runId } from "./config.js";
import { FIRST_EVENT, chatMessage, chatPath, clientId, encode, messageText, parseClientId, parseServerFrame, senderOf, socketUrl, username } from "./frames.js";
import { tokenFor } from "./token.js";

/** From the sender's send to the peer's receipt of the chat_message (both sockets are in this VU). */
export const sendToDeliver = new Trend("chat_send_to_deliver", true);
/** From the send to the sender's own echo: the message is in the stream (accepted). */
export const sendToEcho = new Trend("chat_send_to_echo", true);
/** Per message: true when the peer never received it while both sockets stayed open. */
export const messageLost = new Rate("chat_message_lost");
/** Per pair: true when a socket failed to open, gave no first event in time, or closed unexpectedly. */
export const sessionFailed = new Rate("chat_session_failed");
export const messagesSent = new Counter("chat_messages_sent");
export const duplicates = new Counter("chat_duplicates");
/** `error` frames by code (unavailable: Redis refused; the message was not stored). */
export const errorFrames = new Counter("chat_error_frames");

/**
 * @typedef {{ sentAtMs: number, delivered: boolean, echoed: boolean, refused: boolean }} Sent
 * @typedef {{ me: string, other: string, ws: WebSocket, ready: boolean, open: boolean, sent: Map<string, Sent>, seq: number }} Side
 */

/**
 * Two users chat with each other for `sessionSeconds`, each sending one message every `intervalMs`,
 * from the gateway `home` and the gateway `peer`. Records latency and loss; returns when both closed.
 * @param {{ home: string, peer: string, sessionSeconds: number, intervalMs: number, drainMs: number, messageBytes: number }} o
 */
export function chatPair(o) {
  const vu = exec.vu.idInTest;
  const iteration = exec.vu.iterationInScenario;
  const a = username(runId, vu, iteration, "a");
  const b = username(runId, vu, iteration, "b");
  /** @type {Side[]} */
  const sides = [];
  /** @type {number[]} */
  const timers = [];
  /** @type {number[]} */
  const timeouts = [];
  let finished = false;
  let started = false;

  /** @param {boolean} failed */
  function finish(failed) {
    if (finished) return;
    finished = true;
    for (const t of timers) clearInterval(t);
    for (const t of timeouts) clearTimeout(t);
    sessionFailed.add(failed);
    // Loss counts only a full session: an unexpected close ends it, and what it cut off is not lost
    // (it is persisted; a client re-reads history after reconnecting).
    if (!failed) {
      for (const side of sides) for (const s of side.sent.values()) if (!s.refused) messageLost.add(!s.delivered);
    }
    for (const side of sides) if (side.open) side.ws.close(1000);
  }

  /** @param {string} me @param {string} other @param {string} base */
  function open(me, other, base) {
    const ws = new WebSocket(socketUrl(base, chatPath(other), tokenFor(me)), null, { tags: { endpoint: "chat" } });
    /** @type {Side} */
    const side = { me, other, ws, ready: false, open: false, sent: new Map(), seq: 0 };
    ws.addEventListener("open", () => {
      side.open = true;
    });
    ws.addEventListener("message", (e) => {
      const event = parseServerFrame(/** @type {import("k6/websockets").MessageEvent} */ (e).data);
      if (!event) return;
      if (!side.ready) {
        if (event.type !== FIRST_EVENT.chat) return finish(true);
        side.ready = true;
        if (sides.every((s) => s.ready)) begin();
        return;
      }
      if (event.type === "error") {
        errorFrames.add(1, { code: String(event.code) });
        const s = side.sent.get(String(event.client_id));
        if (s) s.refused = true;
        return;
      }
      if (event.type !== "chat_message") return;
      const id = parseClientId(event.client_id);
      if (!id) return;
      const now = Date.now();
      const from = senderOf(event);
      const owner = sides.find((s) => s.me === from);
      const s = owner?.sent.get(String(event.client_id));
      if (!s) return;
      if (from === side.me) {
        if (!s.echoed) sendToEcho.add(now - id.sentAtMs);
        s.echoed = true;
      } else if (s.delivered) {
        duplicates.add(1);
      } else {
        s.delivered = true;
        sendToDeliver.add(now - id.sentAtMs);
      }
    });
    ws.addEventListener("close", () => {
      side.open = false;
      finish(true);
    });
    ws.addEventListener("error", () => finish(true));
    sides.push(side);
  }

  function begin() {
    if (started || finished) return;
    started = true;
    for (const side of sides) {
      timers.push(
        setInterval(() => {
          if (finished || !side.open) return;
          const sentAtMs = Date.now();
          side.seq += 1;
          const id = clientId(vu, iteration, side.seq, sentAtMs);
          side.sent.set(id, { sentAtMs, delivered: false, echoed: false, refused: false });
          side.ws.send(encode(chatMessage(messageText(side.seq, o.messageBytes), id)));
          messagesSent.add(1);
        }, o.intervalMs),
      );
    }
    timeouts.push(
      setTimeout(() => {
        for (const t of timers) clearInterval(t);
        timeouts.push(setTimeout(() => finish(false), o.drainMs));
      }, o.sessionSeconds * 1000),
    );
  }

  open(a, b, o.home);
  open(b, a, o.peer);
  timeouts.push(
    setTimeout(() => {
      if (!started) finish(true);
    }, connectTimeoutMs),
  );
}
