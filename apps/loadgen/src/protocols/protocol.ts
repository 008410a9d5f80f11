/** What a user's sockets report to the load generator. */
export interface UserEvents {
  /** A chat message reached this user (the partner's, or the user's own echo). */
  message(from: string, clientId: string | undefined, dateAdded: string | undefined): void;
  /** A `new_message_notification` on the user's all-conversations notification socket. */
  notification(): void;
  /** The server refused a frame (`error`), with the frame's client_id when it had one. */
  refused(clientId: string | undefined): void;
  /** A socket closed without the generator asking. */
  closed(code: number): void;
}

/** One user's open sockets. */
export interface UserConnection {
  send(clientId: string): void;
  /** Closes every socket of the user; resolves when closed (or after a timeout, terminated). */
  close(): Promise<void>;
}

export interface ConnectUserOptions {
  /** Base URL of the node, `ws://host:port`. */
  url: string;
  username: string;
  partner: string;
  token: string;
  /** Message text of every send (its size is the benchmark's message size). */
  text: string;
  /** Also open the all-conversations notification socket, when the protocol has one. */
  notifications: boolean;
  events: UserEvents;
  timeoutMs: number;
}

/** A wire protocol the generator can drive: ours, or the Socket.IO baseline's. */
export interface Protocol {
  readonly name: string;
  /** Whether delivery is followed by a persisted-count notification that can be timed. */
  readonly hasNotifications: boolean;
  /** Opens the user's sockets; resolves once each is ready (its first event or handshake done). */
  connectUser(options: ConnectUserOptions): Promise<UserConnection>;
}

export class ConnectError extends Error {
  override readonly name = "ConnectError";
  constructor(
    readonly code: "refused" | "timeout" | "closed" | "network",
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}
