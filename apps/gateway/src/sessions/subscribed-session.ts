import { ALL, EXCEPT_USER, type ChannelListener, type Envelope } from "@chat/bus";
import { CloseCode, ErrorCode } from "@chat/protocol";
import type { GatewayCore, GroupSocket } from "./core.js";
import type { Session, SessionSocket } from "./socket.js";

/**
 * A socket whose first event is not out this long after it opened is closed with 1013 (reconnect).
 * One bound for the whole set-up, not one per step: with a bound per step, the steps of a socket on a
 * fresh node under load (the user's socket count, the channel's subscription and the first event's
 * query, each on a cold connection) could each take just under it and leave the socket silent for
 * three times as long.
 */
const SETUP_TIMEOUT_MS = 5000;

export class SetupTimeoutError extends Error {
  override readonly name = "SetupTimeoutError";
  readonly code = "socket_setup_timeout";
}

/** Bounds a set-up step by the set-up's deadline: a stalled Redis or Postgres call must not leave a socket open and silent. */
async function withinSetupTime<T>(work: Promise<T>, stage: string, deadlineMs: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      work,
      new Promise<never>((_, reject) => {
        const left = Math.max(0, deadlineMs - Date.now());
        timer = setTimeout(() => reject(new SetupTimeoutError(`set-up not done ${SETUP_TIMEOUT_MS} ms after the socket opened (at ${stage})`)), left);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

const ADMITTED = Promise.resolve(true);

/**
 * A socket that listens to one channel. Until its first event is sent, channel frames are held
 * back, so that first event is first; once it is sent the socket is fully subscribed.
 */
export abstract class SubscribedSession implements Session, ChannelListener {
  protected closed = false;
  private held: Buffer[] | null = [];
  private subscribed = false;

  constructor(
    protected readonly core: GatewayCore,
    protected readonly socket: SessionSocket,
    protected readonly username: string,
    protected readonly channel: string,
    /** Envelope target this socket wants (see @chat/bus ALL / conversationTarget). */
    private readonly target: string,
  ) {}

  /** Sends the endpoint's first event; runs after the subscription is in place. */
  protected abstract greet(): Promise<void>;

  /** The group this socket is about (set by scopeToGroup); null for every other socket. */
  private scopedGroup: string | null = null;
  /** The envelope target on this socket's channel that closes it with 4003 (see @chat/bus removedTarget); null: none. */
  private removedTarget: string | null = null;
  /** This socket's entry in the node's membership re-check, from its admission to its stop. */
  private groupSocket: GroupSocket | null = null;

  /**
   * Makes this a socket of a group: admitted for its members only, closed with 4003 by an envelope
   * for `removedOn` on its channel, and by the node's membership re-check.
   */
  protected scopeToGroup(group: string, removedOn: string): void {
    this.scopedGroup = group;
    this.removedTarget = removedOn;
  }

  /**
   * Whether the user may have this socket at all (a group's member): checked once subscribed, so a
   * removal committed after the check reaches the socket (removedTarget). False closes the socket
   * with 4004 before anything shows.
   */
  protected admit(): Promise<boolean> {
    return this.scopedGroup === null ? ADMITTED : this.admitMember(this.scopedGroup);
  }

  private async admitMember(group: string): Promise<boolean> {
    const member = await this.core.groups.isMember(group, this.username);
    if (member && !this.closed) {
      this.groupSocket = { group, username: this.username, removed: () => this.removed() };
      this.core.groupSockets.add(this.groupSocket);
    }
    return member;
  }

  /** Its user is no longer a member of the group this socket is about: closed with 4003. */
  removed(): void {
    if (!this.closed) this.socket.close(CloseCode.removed_from_group, "removed_from_group: you are no longer a member of this group");
  }

  /** Releases what the endpoint holds beyond its subscription. */
  protected abstract release(): void;

  abstract receive(text: string): void;

  /** Called as the socket opens (a microtask later), so the set-up's deadline starts at the open. */
  async start(admitted?: Promise<boolean>): Promise<void> {
    const deadlineMs = Date.now() + SETUP_TIMEOUT_MS;
    let stage = "subscribe";
    try {
      await withinSetupTime(this.core.router.add(this.channel, this), stage, deadlineMs);
      this.subscribed = true;
      if (this.closed) return this.stop();
      stage = "membership";
      if (!(await withinSetupTime(this.admit(), stage, deadlineMs))) {
        this.core.log.info({ user: this.username, channel: this.channel }, "socket refused: not a member");
        this.socket.close(CloseCode.not_a_member, "not_a_member: no such group among yours");
        return;
      }
      if (this.closed) return;
      if (admitted) {
        stage = "connection count";
        if (!(await withinSetupTime(admitted, stage, deadlineMs)) || this.closed) return;
      }
      stage = "greet";
      await withinSetupTime(this.greet(), stage, deadlineMs);
    } catch (err) {
      this.core.log.warn({ err, stage, user: this.username, channel: this.channel }, "socket setup failed");
      this.socket.close(CloseCode.try_again_later, "setup failed, reconnect");
      return;
    }
    const held = this.held ?? [];
    this.held = null;
    this.socket.sendAll(held);
  }

  get greeted(): boolean {
    return this.held === null;
  }

  stop(): void {
    const first = !this.closed;
    this.closed = true;
    if (this.subscribed) {
      this.subscribed = false;
      this.core.router.remove(this.channel, this);
    }
    if (this.groupSocket) {
      this.core.groupSockets.delete(this.groupSocket);
      this.groupSocket = null;
    }
    if (first) this.release();
  }

  deliver(envelope: Envelope): void {
    if (this.closed) return;
    if (envelope.target === this.removedTarget) return this.removed();
    if (!this.wants(envelope.target)) return;
    const frames = this.skips() ? envelope.frames.filter((f) => !this.skip(f)) : envelope.frames;
    if (this.held) for (const frame of frames) this.held.push(frame);
    else this.socket.sendAll(frames);
    for (const frame of frames) this.delivered(frame);
    this.core.metrics.framesFannedOut.inc(frames.length);
  }

  /** Whether this socket is among an envelope's target (see @chat/bus Target). */
  private wants(target: string): boolean {
    if (target === this.target) return true;
    return this.target === ALL && target.startsWith(EXCEPT_USER) && target.slice(EXCEPT_USER.length) !== this.username;
  }

  /** Sees every frame handed to this socket from its channel. */
  protected delivered(_frame: Buffer): void {}

  /** Whether some frames from the channel may have to be left out (see skip); false on the fast path. */
  protected skips(): boolean {
    return false;
  }

  /** A frame from the channel this socket already got another way. */
  protected skip(_frame: Buffer): boolean {
    return false;
  }

  /** Removes held-back frames (e.g. live messages a replay already sent). */
  protected dropHeld(drop: (frame: Buffer) => boolean): void {
    if (this.held) this.held = this.held.filter((f) => !drop(f));
  }

  protected sendError(code: ErrorCode, message: string, clientId?: string): void {
    this.core.metrics.framesRejected.inc({ reason: code });
    this.socket.send(JSON.stringify(clientId === undefined ? { type: "error", code, message } : { type: "error", code, message, client_id: clientId }));
  }
}
