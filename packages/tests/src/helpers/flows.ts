import { expect } from "vitest";
import type { TestClient } from "./client.js";
import { testSql, unreadOf } from "./db.js";
import { waitFor } from "./wait.js";

/** One direction of a conversation, with the sender's chat socket and how many it sent. */
export interface Flow {
  from: string;
  to: string;
  chat: TestClient;
  sent: number;
}

/** The text and client_id of a flow's k-th message: unique, and says whose it is. */
export const flowTag = (f: Flow, k: number): string => `${f.from}>${f.to}#${k}`;

/** Sends one message on every flow. */
export function sendRound(flows: Flow[]): void {
  for (const f of flows) f.chat.send({ type: "chat_message", message: flowTag(f, f.sent), client_id: flowTag(f, f.sent++) });
}

/** Waits for every sent message's echo (or refusal), none refused, and returns the ids of the accepted ones, per flow. */
export async function acceptedIds(flows: Flow[]): Promise<Map<Flow, string[]>> {
  const out = new Map<Flow, string[]>();
  for (const f of flows) {
    const mine = (x: Record<string, unknown>) => String(x["client_id"] ?? "").startsWith(`${f.from}>${f.to}#`);
    await f.chat.until((frames) => frames.filter((x) => (x.type === "chat_message" || x.type === "error") && mine(x)).length === f.sent, 10000, `echoes of ${f.from}>${f.to}`);
    expect(f.chat.ofType("error"), "no message refused").toEqual([]);
    expect(f.chat.schemaViolations).toEqual([]);
    out.set(f, f.chat.ofType("chat_message").filter(mine).map((x) => String(x["id"])));
  }
  return out;
}

/** Messages stored so far that these users sent. */
export async function persistedFrom(users: string[]): Promise<number> {
  const sql = testSql();
  const [row] = await sql<{ n: number }[]>`SELECT count(*)::int AS n FROM messages WHERE from_user IN ${sql(users)}`;
  return row!.n;
}

/** A stored message as the exactly-once checks read it. */
export interface StoredMessage {
  id: string;
  from_user: string;
  to_user: string;
  content: string;
}

/**
 * Waits until `stored()` holds as many messages as were accepted, then: every accepted id is there
 * once and nothing else, no text twice, each flow's messages are its own, and each recipient's unread
 * counter (nothing was read) counts them.
 */
export async function expectStoredExactlyOnce(flows: Flow[], accepted: Map<Flow, string[]>, stored: () => Promise<StoredMessage[]>): Promise<void> {
  const all = [...accepted.values()].flat();
  expect(new Set(all).size).toBe(all.length);
  const rows = await waitFor(
    async () => {
      const r = await stored();
      expect(r.length).toBeGreaterThanOrEqual(all.length);
      return r;
    },
    20_000,
    100,
  );
  expect(rows).toHaveLength(all.length);
  expect(new Set(rows.map((r) => r.id))).toEqual(new Set(all));
  // Written once in any form: no content stored twice (each message's text is unique).
  expect(new Set(rows.map((r) => r.content)).size).toBe(rows.length);
  for (const f of flows) {
    const ids = new Set(accepted.get(f));
    const received = rows.filter((r) => r.from_user === f.from && r.to_user === f.to);
    expect(received.length, `${f.from}>${f.to}`).toBe(ids.size);
    expect(received.every((r) => ids.has(r.id) && r.content.startsWith(`${f.from}>${f.to}#`))).toBe(true);
    expect(await unreadOf(f.to, f.from), `unread of ${f.to} from ${f.from}`).toBe(ids.size);
  }
}
