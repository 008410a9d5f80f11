import type { MessageRow } from "@chat/db";
import type { ChatMessageEvent } from "@chat/protocol";

/** A stored message as the HTTP API returns it. */
export function messageResource(row: MessageRow) {
  return {
    id: row.id,
    from_user: { username: row.fromUser },
    to_user: { username: row.toUser },
    date_added: new Date(row.dateAdded).toISOString(),
    content: row.content,
    multimedia_url: row.multimediaUrl,
    ...(row.clientId ? { client_id: row.clientId } : {}),
  };
}

/**
 * A message in a history page: with `read_by`, the members other than its sender who have read it
 * (for 1:1, its recipient or nobody), from each member's read position.
 */
export function historyItem(row: MessageRow, readPositions: ReadonlyMap<string, bigint>) {
  const read = (readPositions.get(row.toUser) ?? 0n) >= row.streamPosition;
  return { ...messageResource(row), read_by: read ? [row.toUser] : [] };
}

/** A stored message as a `chat_message` event, for catch-up replays (same shape as a live one). */
export function messageEvent(row: MessageRow): ChatMessageEvent {
  const event: ChatMessageEvent = {
    type: "chat_message",
    id: row.id,
    message: row.content,
    multimedia_url: row.multimediaUrl,
    date_added: new Date(row.dateAdded).toISOString(),
    from_user: { username: row.fromUser },
    to_user: { username: row.toUser },
    room: row.toUser,
  };
  if (row.clientId) event.client_id = row.clientId;
  return event;
}
