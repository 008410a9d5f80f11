import { isGroupConversation as isGroup, roomLabel } from "@chat/bus";
import type { Group, MessageRow, SystemEvent } from "@chat/db";
import type { ChatMessageEvent } from "@chat/protocol";

/** A group's system event as its row stores it (see @chat/db GroupEvent), or null for a chat message. */
function systemEventOf(row: MessageRow): Record<string, unknown> | null {
  if (row.event === null) return null;
  try {
    const { kind, ...rest } = JSON.parse(row.event) as { kind: string };
    return { event: kind, by: row.fromUser, ...rest };
  } catch {
    return null;
  }
}

/**
 * A stored message as the HTTP API returns it. In a group `to_user` is null; a group's system event
 * (created, renamed, member_added, member_removed, member_left) also has `event`, and its `content`
 * is the line a client that knows no system events shows.
 */
export function messageResource(row: MessageRow) {
  const event = systemEventOf(row);
  return {
    id: row.id,
    from_user: { username: row.fromUser },
    to_user: isGroup(row.toUser) ? null : { username: row.toUser },
    date_added: new Date(row.dateAdded).toISOString(),
    content: row.content,
    multimedia_url: row.multimediaUrl,
    ...(row.clientId ? { client_id: row.clientId } : {}),
    ...(event ? { event } : {}),
  };
}

/**
 * A message in a history page: with `read_by`, the members other than its sender who have read it
 * (for 1:1, its recipient or nobody), from each member's read position. A system event is read by
 * nobody.
 */
export function historyItem(row: MessageRow, readPositions: ReadonlyMap<string, bigint>) {
  if (!isGroup(row.toUser)) {
    const read = (readPositions.get(row.toUser) ?? 0n) >= row.streamPosition;
    return { ...messageResource(row), read_by: read ? [row.toUser] : [] };
  }
  const readBy: string[] = [];
  if (row.event === null) for (const [user, position] of readPositions) if (user !== row.fromUser && position >= row.streamPosition) readBy.push(user);
  return { ...messageResource(row), read_by: readBy.sort() };
}

/** A group as the API returns it (docs/openapi.yaml Group). */
export function groupResource(group: Group) {
  return { id: group.id, name: group.name, members: group.members, admins: group.admins, created_at: group.createdAt };
}

/** The live `group_event` frame of a system event, for the group's chat sockets. */
export function groupEventFrame(groupId: string, e: SystemEvent): string {
  const { kind, ...rest } = e.event;
  return JSON.stringify({ type: "group_event", id: e.id, room: groupId, event: kind, by: e.by, ...rest, text: e.text, date_added: e.at });
}

/** A stored message as a `chat_message` event, for catch-up replays (same shape as a live one). */
export function messageEvent(row: MessageRow): ChatMessageEvent {
  const group = isGroup(row.toUser);
  const event: ChatMessageEvent = {
    type: "chat_message",
    id: row.id,
    message: row.content,
    multimedia_url: row.multimediaUrl,
    date_added: new Date(row.dateAdded).toISOString(),
    from_user: { username: row.fromUser },
    to_user: group ? null : { username: row.toUser },
    room: roomLabel(row.toUser),
  };
  if (row.clientId) event.client_id = row.clientId;
  return event;
}
