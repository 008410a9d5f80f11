import exec from "k6/execution";
import { Rate, Trend } from "k6/metrics";
import { clearInterval, clearTimeout, setInterval, setTimeout } from "k6/timers";
import { WebSocket } from "k6/websockets";
import { connectTimeoutMs, runId } from "./config.js";
import {
  FIRST_EVENT,
  chatMessage,
  chatPath,
  clientId,
  conversationNotificationsPath,
  encode,
  messageText,
  notificationsPath,
  parseServerFrame,
  readMessages,
  seqOfText,
  socketUrl,
  username,
} from "./frames.js";
import { tokenFor } from "./token.js";

/** From a send to the reader's new_message_notification (the message is persisted by then). */
export const notifyNewMessage = new Trend("notify_new_message", true);
/** From a send to the reader's single_conversation_unread_count for it. */
export const notifyConversationCount = new Trend("notify_conversation_count", true);
/** From read_messages to both of the reader's counts reading 0. */
export const notifyReadToZero = new Trend("notify_read_to_zero", true);
/** Per count received: true when it is exactly the expected one (counts are exact and in order). */
export const countExact = new Rate("notify_count_exact");
/** Per expected notification: true when it never came. */
export const notificationLost = new Rate("notify_lost");
/** Per flow: true when a socket failed to open or to give its first event in time. */
export const flowFailed = new Rate("notify_flow_failed");

/**
 * A reader with both notification sockets and a chat socket, a sender with a chat socket. The sender
 * sends `messages` messages, one per `intervalMs`; the reader checks every notification and its exact
 * count, then reads the conversation and waits for both counts to drop to 0.
 * @param {{ home: string, peer: string, messages: number, intervalMs: number, settleMs: number, messageBytes: number }} o
 */
export function notificationsFlow(o) {
  const vu = exec.vu.idInTest;
  const iteration = exec.vu.iterationInScenario;
  const reader = username(runId, vu, iteration, "r");
  const sender = username(runId, vu, iteration, "s");
  /** @type {number[]} */
  const sentAt = [];
  let globalCount = 0;
  let conversationCount = 0;
  let globalNotified = 0;
  let conversationNotified = 0;
  /** @type {number | undefined} */
  let readAt;
  let zeroGlobal = false;
  let zeroConversation = false;
  let finished = false;
  let started = false;
  /** @type {number[]} */
  const timeouts = [];
  /** @type {number | undefined} */
  let ticker;

  /** @param {string} endpoint @param {string} me @param {string} path @param {string} base @param {string} first @param {(e: import("./frames.js").ServerEvent) => void} onEvent */
  function open(endpoint, me, path, base, first, onEvent) {
    const ws = new WebSocket(socketUrl(base, path, tokenFor(me)), null, { tags: { endpoint } });
    const socket = { ws, ready: false, open: false };
    ws.addEventListener("open", () => {
      socket.open = true;
    });
    ws.addEventListener("message", (e) => {
      const event = parseServerFrame(/** @type {import("k6/websockets").MessageEvent} */ (e).data);
      if (!event) return;
      if (!socket.ready) {
        if (event.type !== first) return finish(true);
        socket.ready = true;
        if (first !== FIRST_EVENT.chat) countExact.add(event.unread_count === 0);
        if (sockets.every((s) => s.ready)) begin();
        return;
      }
      onEvent(event);
    });
    ws.addEventListener("close", () => {
      socket.open = false;
      finish(true);
    });
    ws.addEventListener("error", () => finish(true));
    return socket;
  }

  /** @param {boolean} failed */
  function finish(failed) {
    if (finished) return;
    finished = true;
    if (ticker !== undefined) clearInterval(ticker);
    for (const t of timeouts) clearTimeout(t);
    flowFailed.add(failed);
    if (!failed) {
      for (let k = 1; k <= sentAt.length; k++) {
        notificationLost.add(globalNotified < k);
        notificationLost.add(conversationNotified < k);
      }
    }
    for (const s of sockets) if (s.open) s.ws.close(1000);
  }

  function maybeRead() {
    if (readAt !== undefined || sentAt.length < o.messages) return;
    if (globalNotified < o.messages || conversationNotified < o.messages) return;
    readAt = Date.now();
    readerChat.ws.send(encode(readMessages()));
  }

  function maybeDone() {
    if (readAt !== undefined && zeroGlobal && zeroConversation) {
      notifyReadToZero.add(Date.now() - readAt);
      finish(false);
    }
  }

  const global = open("notifications", reader, notificationsPath(), o.home, FIRST_EVENT.notifications, (event) => {
    const count = Number(event.unread_count);
    if (event.type === "new_message_notification") {
      countExact.add(count === globalCount + 1);
      globalCount = count;
      globalNotified += 1;
      const at = sentAt[count - 1];
      if (at !== undefined) notifyNewMessage.add(Date.now() - at);
      maybeRead();
    } else if (event.type === "unread_count" && readAt !== undefined) {
      countExact.add(count === 0);
      zeroGlobal = count === 0;
      maybeDone();
    }
  });
  const conversation = open("conversation-notifications", reader, conversationNotificationsPath(sender), o.home, FIRST_EVENT.conversationNotifications, (event) => {
    if (event.type === "single_conversation_unread_count") {
      const count = Number(event.unread_count);
      if (readAt !== undefined) {
        countExact.add(count === 0);
        zeroConversation = count === 0;
        maybeDone();
        return;
      }
      countExact.add(count === conversationCount + 1);
      conversationCount = count;
      conversationNotified += 1;
      const at = sentAt[count - 1];
      if (at !== undefined) notifyConversationCount.add(Date.now() - at);
      maybeRead();
    } else if (event.type === "single_conversation_last_message") {
      countExact.add(seqOfText(event.last_message) === conversationCount);
    }
  });
  const readerChat = open("chat", reader, chatPath(sender), o.peer, FIRST_EVENT.chat, () => {});
  const senderChat = open("chat", sender, chatPath(reader), o.peer, FIRST_EVENT.chat, () => {});
  const sockets = [global, conversation, readerChat, senderChat];

  function begin() {
    if (started || finished) return;
    started = true;
    ticker = setInterval(() => {
      if (finished) return;
      if (sentAt.length >= o.messages) {
        if (ticker !== undefined) clearInterval(ticker);
        return;
      }
      sentAt.push(Date.now());
      const seq = sentAt.length;
      senderChat.ws.send(encode(chatMessage(messageText(seq, o.messageBytes), clientId(vu, iteration, seq, Date.now()))));
    }, o.intervalMs);
    // Whatever has not arrived by then is lost.
    timeouts.push(setTimeout(() => finish(false), o.messages * o.intervalMs + o.settleMs));
  }

  timeouts.push(
    setTimeout(() => {
      if (!started) finish(true);
    }, connectTimeoutMs),
  );
}
