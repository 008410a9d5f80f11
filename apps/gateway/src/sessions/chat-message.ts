import { isGroupConversation, roomLabel, type MessageEntry } from "@chat/bus";
import type { ChatMessageEvent } from "@chat/protocol";

/** A live chat_message frame starts with `{"type":"chat_message","id":"` then the 36-character id (see chatMessageEvent). */
const ID_AT = '{"type":"chat_message","id":"'.length;

/** The id of a serialized chat_message frame, or undefined for any other frame. */
export function chatMessageIdOf(frame: Buffer): string | undefined {
  return frame.toString("latin1", 0, ID_AT) === '{"type":"chat_message","id":"' ? frame.toString("latin1", ID_AT, ID_AT + 36) : undefined;
}

/** The `chat_message` event of an accepted message: built once, from the stream entry, live or replayed. */
export function chatMessageEvent(entry: MessageEntry): ChatMessageEvent {
  const event: ChatMessageEvent = {
    type: "chat_message",
    id: entry.id,
    message: entry.message,
    multimedia_url: entry.multimedia_url,
    date_added: entry.date_added,
    from_user: { username: entry.from },
    // A group's message names the group (its id) as room, and nobody as recipient.
    to_user: isGroupConversation(entry.to) ? null : { username: entry.to },
    room: roomLabel(entry.to),
  };
  if (entry.client_id !== undefined) event.client_id = entry.client_id;
  return event;
}
