import { isValidUsername } from "@chat/protocol";

/** Which endpoint a WebSocket path names. A trailing slash is optional everywhere. */
export type Endpoint =
  | { kind: "chat"; other: string }
  | { kind: "notifications" }
  | { kind: "conversation-notifications"; other: string }
  | { kind: "group-chat"; group: string }
  | { kind: "group-notifications"; group: string };

/** A group's id as paths carry it: a UUID in lower case (the gateway makes UUIDv7s). */
export const GROUP_ID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export type RouteResult = { ok: true; endpoint: Endpoint } | { ok: false; reason: string };

function decode(segment: string): string | undefined {
  try {
    return decodeURIComponent(segment);
  } catch {
    return undefined;
  }
}

export function parseWebSocketPath(path: string): RouteResult {
  const parts = path.replace(/\/$/, "").split("/");
  // ["", "ws", ...]
  if (parts[0] !== "" || parts[1] !== "ws") return { ok: false, reason: "unknown endpoint" };
  const rest = parts.slice(2).map(decode);
  if (rest.some((p) => p === undefined)) return { ok: false, reason: "malformed path encoding" };
  if (rest.length === 1 && rest[0] === "notifications") return { ok: true, endpoint: { kind: "notifications" } };
  if (rest.length === 2 && rest[0] === "groups") {
    const group = rest[1]!;
    return GROUP_ID_PATTERN.test(group) ? { ok: true, endpoint: { kind: "group-chat", group } } : { ok: false, reason: "invalid group id in path" };
  }
  if (rest.length === 3 && rest[0] === "notifications" && rest[1] === "groups") {
    const group = rest[2]!;
    return GROUP_ID_PATTERN.test(group) ? { ok: true, endpoint: { kind: "group-notifications", group } } : { ok: false, reason: "invalid group id in path" };
  }
  if (rest.length === 2 && rest[0] === "notifications") {
    const other = rest[1]!;
    return isValidUsername(other)
      ? { ok: true, endpoint: { kind: "conversation-notifications", other } }
      : { ok: false, reason: "invalid username in path" };
  }
  if (rest.length === 1) {
    const other = rest[0]!;
    return isValidUsername(other) ? { ok: true, endpoint: { kind: "chat", other } } : { ok: false, reason: "invalid username in path" };
  }
  return { ok: false, reason: "unknown endpoint" };
}
