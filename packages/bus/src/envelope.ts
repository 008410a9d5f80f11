/**
 * What travels on a pub/sub channel: one header line `<origin node>\t<target>\t<sent at ms>` followed by one or more
 * server frames, each already serialized JSON on its own line (JSON text never holds a raw newline).
 * A receiving node parses the header once and hands the same frame bytes to every local socket.
 */
export interface Envelope {
  /** Node id of the publisher, for logs. */
  origin: string;
  /** Which sockets on the channel want the frames; see Target. */
  target: string;
  /** Publisher's clock at publish (epoch ms), for the publish-to-deliver latency metric. */
  sentAt: number;
  /** Serialized frames, in the order they must be sent. */
  frames: Buffer[];
}

/**
 * Targets: on a room channel ALL, or `exceptUserTarget(user)` for every socket but that user's; on a
 * user channel ALL means the user's `/ws/notifications/` sockets and `conversationTarget(other)` means
 * their `/ws/notifications/{other}/` sockets.
 */
export const ALL = "*";
export const conversationTarget = (other: string): string => `c:${other}`;
export const EXCEPT_USER = "x:";
export const exceptUserTarget = (user: string): string => `${EXCEPT_USER}${user}`;
/**
 * Closes sockets instead of reaching them: on a group's channel, `removedTarget(user)` closes that
 * user's chat sockets of the group; on a user's channel, `removedTarget(<group conversation>)` their
 * notification sockets of the group (a member removed while connected).
 */
export const removedTarget = (who: string): string => `k:${who}`;

const NL = 0x0a;
const TAB = 0x09;

export function encodeEnvelope(origin: string, target: string, frames: readonly string[]): string {
  return `${origin}\t${target}\t${Date.now()}\n${frames.join("\n")}`;
}

/** The `presence` event: whether `username` has a socket open now. */
export function presenceFrame(username: string, online: boolean): string {
  return JSON.stringify({ type: "presence", user: username, online });
}

/** What a user's online channel carries when they come online or go offline (ConnectionCounter). */
export function onlineEnvelope(origin: string, username: string, online: boolean): string {
  return encodeEnvelope(origin, ALL, [presenceFrame(username, online)]);
}

export class EnvelopeDecodeError extends Error {
  override readonly name = "EnvelopeDecodeError";
  readonly code = "envelope_invalid";
}

export function decodeEnvelope(payload: Buffer): Envelope {
  const headerEnd = payload.indexOf(NL);
  const tab = payload.indexOf(TAB);
  const tab2 = payload.indexOf(TAB, tab + 1);
  if (headerEnd <= 0 || tab <= 0 || tab2 <= tab || tab2 > headerEnd || headerEnd === payload.length - 1) {
    throw new EnvelopeDecodeError(`malformed envelope (${payload.length} bytes)`);
  }
  const origin = payload.toString("utf8", 0, tab);
  const target = payload.toString("utf8", tab + 1, tab2);
  const sentAt = Number(payload.toString("latin1", tab2 + 1, headerEnd));
  if (!Number.isFinite(sentAt)) throw new EnvelopeDecodeError("envelope timestamp is not a number");
  const frames: Buffer[] = [];
  let start = headerEnd + 1;
  while (start < payload.length) {
    let end = payload.indexOf(NL, start);
    if (end === -1) end = payload.length;
    if (end > start) frames.push(payload.subarray(start, end));
    start = end + 1;
  }
  return { origin, target, sentAt, frames };
}
