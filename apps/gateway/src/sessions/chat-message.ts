import type { MessageEntry } from "@chat/bus";
import type { ChatMessageEvent } from "@chat/protocol";

/** The `chat_message` event of an accepted message: built once, from the stream entry, live or replayed. */
export function chatMessageEvent(entry: MessageEntry): ChatMessageEvent {
  const event: ChatMessageEvent = {
    type: "chat_message",
    id: entry.id,
    message: entry.message,
    multimedia_url: entry.multimedia_url,
    date_added: entry.date_added,
    from_user: { username: entry.from },
    to_user: { username: entry.to },
    room: entry.to,
  };
  if (entry.client_id !== undefined) event.client_id = entry.client_id;
  return event;
}
