/** Events the server sends. Field names follow ../shared/seed/chat-protocol.md and docs/protocol.md. */

export interface UserRef {
  username: string;
}

/** A message as every socket of its conversation receives it. */
export interface ChatMessageEvent {
  type: "chat_message";
  /** UUIDv7 assigned by the gateway before the message is persisted; unique and time-ordered. */
  id: string;
  /** "" when only a multimedia_url was sent. */
  message: string;
  multimedia_url: string | null;
  /** ISO 8601 UTC. */
  date_added: string;
  from_user: UserRef;
  /** The recipient; null in a group. */
  to_user: UserRef | null;
  /** The recipient's username, as the sender addressed it; in a group, the group's id. */
  room: string;
  /** Echoed when the sender gave one. */
  client_id?: string;
}

export interface UserJoinEvent {
  type: "user_join";
  user: string;
}

export interface UserLeaveEvent {
  type: "user_leave";
  user: string;
}

export interface OnlineUserListEvent {
  type: "online_user_list";
  users: string[];
}

export interface UnreadCountEvent {
  type: "unread_count";
  unread_count: number;
}

export interface NewMessageNotificationEvent {
  type: "new_message_notification";
  unread_count: number;
}

export interface SingleConversationUnreadCountEvent {
  type: "single_conversation_unread_count";
  unread_count: number;
}

export interface SingleConversationNewMessageNotificationEvent {
  type: "single_conversation_new_message_notification";
}

export interface SingleConversationLastMessageEvent {
  type: "single_conversation_last_message";
  /** The text of the newest message ("" for a media-only one). */
  last_message: string;
  /** Its `date_added`. */
  last_datetime: string;
}

/** Ends the replay of a chat socket opened with `?since=`: recovered false means page the HTTP history. */
export interface CatchUpEndEvent {
  type: "catch_up_end";
  recovered: boolean;
  /** Messages replayed before this event. */
  count: number;
}

/** Another member of the conversation is typing (never persisted; sent at most a few times a second). */
export interface TypingEvent {
  type: "typing";
  user: string;
  /** The conversation, as the typist addressed it (for 1:1, the username of the one who reads this). */
  room: string;
}

/** Another member read the conversation up to `last_read_id` (after its `read_messages` was persisted). */
export interface ReadReceiptEvent {
  type: "read_receipt";
  /** Who read. */
  user: string;
  /** The conversation, as the reader addressed it (for 1:1, the username of the one who gets this). */
  room: string;
  /** The newest message of yours the reader has now read; null when you have sent none yet. */
  last_read_id: string | null;
  /** When the read was accepted. */
  read_at: string;
}

/** On the all-conversations notifications socket: a recent conversation partner is online now, or not. */
export interface PresenceEvent {
  type: "presence";
  user: string;
  online: boolean;
}

/** A group's membership or name changed (also in its history, as a system event). */
export interface GroupEventEvent {
  type: "group_event";
  /** The event's id in the group's history. */
  id: string;
  /** The group's id. */
  room: string;
  event: "created" | "renamed" | "member_added" | "member_removed" | "member_left";
  /** Who made the change. */
  by: string;
  /** Who was added, removed or left. */
  user?: string;
  /** The group's name (created, renamed). */
  name?: string;
  /** Everyone in it (created). */
  members?: string[];
  /** A line to show ("alice added carol"). */
  text: string;
  date_added: string;
}

export interface ErrorEvent {
  type: "error";
  code: string;
  message: string;
  client_id?: string;
}

export type ServerEvent =
  | ChatMessageEvent
  | UserJoinEvent
  | UserLeaveEvent
  | OnlineUserListEvent
  | UnreadCountEvent
  | NewMessageNotificationEvent
  | SingleConversationUnreadCountEvent
  | SingleConversationNewMessageNotificationEvent
  | SingleConversationLastMessageEvent
  | CatchUpEndEvent
  | TypingEvent
  | ReadReceiptEvent
  | PresenceEvent
  | GroupEventEvent
  | ErrorEvent;

/** Events a client sends, on the chat socket `/ws/{other}/` only. */
export interface ChatMessageFrame {
  type: "chat_message";
  message?: string;
  multimedia_url?: string;
  file_identifier?: string;
  multimedia_url_expiration?: string;
  client_id?: string;
}

export interface ReadMessagesFrame {
  type: "read_messages";
}

export interface TypingFrame {
  type: "typing";
}

export type ClientFrame = ChatMessageFrame | ReadMessagesFrame | TypingFrame;
