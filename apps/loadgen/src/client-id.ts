/**
 * The load generator's `client_id`: `<seq>.<scheduled µs>`, the sender's sequence number on its
 * stream and the send time the open-loop schedule gave the message (µs on the generator thread's
 * monotonic clock). The receiver needs nothing else to account for the message and time it.
 */
export function encodeClientId(seq: number, scheduledUs: number): string {
  return `${seq}.${Math.round(scheduledUs)}`;
}

/** The parts of a load generator client_id, or undefined when it is not one. */
export function decodeClientId(clientId: unknown): { seq: number; scheduledUs: number } | undefined {
  if (typeof clientId !== "string") return undefined;
  const dot = clientId.indexOf(".");
  if (dot <= 0) return undefined;
  const seq = Number(clientId.slice(0, dot));
  const scheduledUs = Number(clientId.slice(dot + 1));
  if (!Number.isInteger(seq) || seq < 0 || !Number.isFinite(scheduledUs) || clientId.length === dot + 1) return undefined;
  return { seq, scheduledUs };
}
