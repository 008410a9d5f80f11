/** What session logic sees of a WebSocket: the transport stays in ../transport. */
export interface SessionSocket {
  /** Sends one text frame; a no-op once the socket is closed. */
  send(data: string | Buffer): void;
  /**
   * Sends text frames in order, written together: one system call for what fits the transport's
   * buffer, instead of one per frame. Past the backpressure limit the rest is dropped and the socket
   * closed, as with `send`.
   */
  sendAll(frames: readonly (string | Buffer)[]): void;
  /** Closes with a WebSocket close code; a no-op once closed. */
  close(code: number, reason: string): void;
}

/** A socket's lifetime on this node, driven by the transport. */
export interface Session {
  /**
   * The socket is open and may start its subscriptions. Its first event must go out within the
   * set-up bound, or it is closed with 1013. With `admitted`, nothing shows (presence, first event)
   * before it resolves true; false means the socket is being closed.
   */
  start(admitted?: Promise<boolean>): Promise<void>;
  /** A text frame arrived (already size-checked and decoded). */
  receive(text: string): void;
  /** The socket is gone; release everything. */
  stop(): void;
  /** Whether its first event has gone out (its set-up finished). */
  readonly greeted: boolean;
}
