import { expect } from "vitest";
import type { Frame, TestClient } from "../helpers/index.js";
import { checkAgainstSpec } from "../helpers/openapi.js";

/**
 * What the engine suites share. Everything here goes through the public surface (the WebSocket
 * protocol of docs/protocol.md and the HTTP API of docs/openapi.yaml), never Redis or Postgres, so the
 * same assertions hold on both engines.
 */

/** Sends (messages and reads) are not rate-limited: for tests that flood. */
export const NO_RATE_LIMIT = { CHAT_RATE_MESSAGES_PER_SECOND: "0" } as const;

export const UUID_V7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

/** A chat socket path, a notifications socket path. */
export const chatPath = (other: string, since?: string) => `/ws/${other}/${since === undefined ? "" : `?since=${since}`}`;
export const notificationsPath = (other?: string) => (other === undefined ? "/ws/notifications/" : `/ws/notifications/${other}/`);

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Json = any;

export interface ApiResult {
  status: number;
  body: Json;
}

/** GET on the HTTP API with a bearer token (none when `token` is undefined); the answer is checked against docs/openapi.yaml. */
export async function api(base: string, path: string, token: string | undefined): Promise<ApiResult> {
  const res = await fetch(`${base}${path}`, { headers: token === undefined ? {} : { authorization: `Bearer ${token}` } });
  return answer("GET", path, res);
}

async function answer(method: string, path: string, res: Response): Promise<ApiResult> {
  const text = await res.text();
  let body: Json;
  try {
    body = JSON.parse(text);
  } catch {
    body = { raw: text };
  }
  if ((res.headers.get("content-type") ?? "").startsWith("application/json")) checkAgainstSpec(method, path, res.status, body);
  return { status: res.status, body };
}

/** Every message of the caller's conversation with `other`, newest first, following `before` pages of `limit`. */
export function history(base: string, other: string, token: string, limit = 50): Promise<Json[]> {
  return allPages(base, `/api/rooms/${other}/messages`, token, limit);
}

/** Every item of a history path (1:1 or group), newest first, following `before` pages of `limit`. */
async function allPages(base: string, path: string, token: string, limit: number): Promise<Json[]> {
  const all: Json[] = [];
  let before: string | null = null;
  for (let pages = 0; ; pages++) {
    expect(pages, "history pages").toBeLessThan(1000);
    const r: ApiResult = await api(base, `${path}?limit=${limit}${before === null ? "" : `&before=${before}`}`, token);
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    all.push(...r.body.messages);
    before = r.body.next_cursor;
    if (before === null) return all;
  }
}

/** The caller's conversations (one page of 100). */
export async function conversations(base: string, token: string): Promise<Json[]> {
  const r = await api(base, "/api/conversations?limit=100", token);
  expect(r.status, JSON.stringify(r.body)).toBe(200);
  return r.body.conversations;
}

/** The caller's conversation with `other` in GET /api/conversations, if listed. */
export async function conversationWith(base: string, token: string, other: string): Promise<Json | undefined> {
  return (await conversations(base, token)).find((c: Json) => c.other_user.username === other);
}

/**
 * How a chat_message frame appears in a history page (docs/openapi.yaml HistoryMessage), read by
 * `readBy` (an options object, so that `frames.map(asHistoryMessage)` stays right).
 */
export function asHistoryMessage(f: Frame, options?: { readBy?: string[] } | number): Json {
  const readBy = typeof options === "object" ? (options.readBy ?? []) : [];
  return { ...asStoredMessage(f), read_by: readBy };
}

/** How a chat_message frame appears as a conversation's last_message (docs/openapi.yaml Message). */
export function asStoredMessage(f: Frame): Json {
  return {
    id: f["id"],
    from_user: f["from_user"],
    to_user: f["to_user"],
    date_added: new Date(String(f["date_added"])).toISOString(),
    content: f["message"],
    multimedia_url: f["multimedia_url"],
    ...(f["client_id"] === undefined ? {} : { client_id: f["client_id"] }),
  };
}

export const chatMessages = (c: TestClient): Frame[] => c.ofType("chat_message");
export const chatIds = (frames: Frame[]): string[] => frames.filter((f) => f.type === "chat_message").map((f) => String(f["id"]));

/**
 * Sends one message with `client_id` = text (unless `extra` gives one) and resolves to the sender's
 * own echo (the proof it was accepted).
 */
export async function say(chat: TestClient, text: string, extra: Record<string, unknown> = {}): Promise<Frame> {
  const clientId = extra["client_id"] ?? text;
  chat.send({ type: "chat_message", message: text, client_id: clientId, ...extra });
  for (;;) {
    const f = await chat.next(undefined, 10000);
    if (f.type === "error" && f["client_id"] === clientId) throw new Error(`refused: ${JSON.stringify(f)}`);
    if (f.type === "chat_message" && f["client_id"] === clientId) return f;
  }
}

/** Takes the next `n` frames of a socket, whatever their type (so nothing may slip in between). */
export async function take(c: TestClient, n: number, timeoutMs = 10000): Promise<Frame[]> {
  const out: Frame[] = [];
  for (let i = 0; i < n; i++) out.push(await c.next(undefined, timeoutMs));
  return out;
}

/** The three frames `/ws/notifications/{from}/` gets, in this order, for one message. */
export function conversationTriple(count: number, echo: Frame): Frame[] {
  return [
    { type: "single_conversation_new_message_notification" },
    { type: "single_conversation_unread_count", unread_count: count },
    { type: "single_conversation_last_message", last_message: echo["message"], last_datetime: echo["date_added"] },
  ];
}

/** Every frame of every socket matched the protocol's server schemas. */
export function noSchemaViolations(...clients: TestClient[]): void {
  for (const c of clients) expect(c.schemaViolations).toEqual([]);
}

/** Skips presence frames (they may interleave anywhere after the greeting). */
export const withoutPresence = (frames: Frame[]): Frame[] => frames.filter((f) => f.type !== "user_join" && f.type !== "user_leave");

/** A request with a JSON body (or none) on the HTTP API, with a bearer token. */
export async function apiSend(base: string, method: "POST" | "PATCH" | "DELETE", path: string, token: string, body?: unknown): Promise<ApiResult> {
  const res = await fetch(`${base}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { "content-type": "application/json" }) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  return answer(method, path, res);
}

/** Group socket paths. */
export const groupChatPath = (id: string, since?: string) => `/ws/groups/${id}/${since === undefined ? "" : `?since=${since}`}`;
export const groupNotificationsPath = (id: string) => `/ws/notifications/groups/${id}/`;

/** Creates a group as `token`'s user; resolves to its id. */
export async function createGroup(base: string, token: string, name: string, members: string[]): Promise<string> {
  const r = await apiSend(base, "POST", "/api/groups", token, { name, members });
  expect(r.status, JSON.stringify(r.body)).toBe(201);
  return r.body.id;
}

/** Every item of a group's history, newest first, following `before` pages of `limit`. */
export function groupHistory(base: string, id: string, token: string, limit = 50): Promise<Json[]> {
  return allPages(base, `/api/groups/${id}/messages`, token, limit);
}

/** A real 1x1 PNG: the upload endpoint may look at the bytes, not only the declared type. */
const PNG = Buffer.from("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==", "base64");

/** Uploads a PNG as the token's user; resolves to the upload's answer. */
export async function uploadPng(base: string, token: string): Promise<{ file_location: string; file_identifier: string }> {
  const form = new FormData();
  form.append("myFile", new Blob([PNG], { type: "image/png" }), "pixel.png");
  const res = await fetch(`${base}/api/rooms/upload`, { method: "POST", body: form, headers: { authorization: `Bearer ${token}` } });
  const body = (await res.json()) as Json;
  expect(res.status, JSON.stringify(body)).toBe(200);
  return body;
}
