import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, writeFileSync } from "node:fs";
import { request as httpRequest } from "node:http";
import { tmpdir } from "node:os";
import { dirname, join, resolve, sep } from "node:path";
import { describe, expect, it, onTestFinished } from "vitest";
import {
  atFileEnd,
  connectReady,
  freshPrefix,
  messagesBetween,
  REPO_ROOT,
  startGateway,
  startWorker,
  testSql,
  tokenFor,
  uniqueUser,
  unreadOf,
  waitFor,
  type Frame,
  type Gateway,
  type TestClient,
} from "./helpers/index.js";
import { ajv, checkAgainstSpec, compiled, resolveRef, responseSchema, spec, strictAjv } from "./helpers/openapi.js";

type Json = Record<string, unknown>;
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Any = any;

interface ApiResult {
  status: number;
  contentType: string;
  body: Any;
  bytes: Buffer;
}

interface CallOptions {
  token?: string | undefined;
  method?: "GET" | "POST";
  body?: RequestInit["body"];
  headers?: Record<string, string>;
}

/** Whether the gateway process is still running; for failure messages. */
async function gatewayState(g: Gateway): Promise<string> {
  const code = await Promise.race([g.exited, new Promise<"running">((r) => setTimeout(() => r("running"), 500))]);
  return code === "running" ? "the gateway is still running" : `the gateway process EXITED with code ${code}`;
}

/** The gateway still answers and its process has not exited. */
async function expectAlive(g: Gateway): Promise<void> {
  let health = "";
  try {
    health = await (await fetch(`${httpBase(g)}/healthz`)).text();
  } catch (err) {
    throw new Error(`gateway no longer answers /healthz (${String(err)}); ${await gatewayState(g)}`);
  }
  expect(health).toBe("ok");
  expect(g.child.exitCode, "gateway exit code").toBeNull();
}

function httpBase(g: Gateway): string {
  return `http://127.0.0.1:${g.port}`;
}

/** One HTTP request through global fetch; a JSON answer is parsed and validated against the spec. */
async function call(g: Gateway, path: string, options: CallOptions = {}): Promise<ApiResult> {
  const method = options.method ?? "GET";
  const headers: Record<string, string> = { ...options.headers };
  if (options.token !== undefined) headers["authorization"] = `Bearer ${options.token}`;
  let res: Response;
  try {
    res = await fetch(`${httpBase(g)}${path}`, { method, headers, body: options.body ?? null });
  } catch (err) {
    throw new Error(`${method} ${path} failed (${String((err as Error & { cause?: Error }).cause?.message ?? err)}); ${await gatewayState(g)}`);
  }
  const bytes = Buffer.from(await res.arrayBuffer());
  const contentType = res.headers.get("content-type") ?? "";
  let body: Any = undefined;
  if (contentType.startsWith("application/json")) {
    body = JSON.parse(bytes.toString("utf8"));
    checkAgainstSpec(method, path, res.status, body);
  } else if (path.startsWith("/api/")) {
    throw new Error(`${method} ${path} answered ${res.status} with content-type ${JSON.stringify(contentType)}, not JSON`);
  }
  return { status: res.status, contentType, body, bytes };
}

/** A GET with the path sent byte for byte (fetch would normalize `..`), for traversal attempts. */
function rawGet(g: Gateway, rawPath: string, token: string): Promise<ApiResult> {
  return new Promise((resolvePromise, reject) => {
    const req = httpRequest({ host: "127.0.0.1", port: g.port, method: "GET", path: rawPath, headers: { authorization: `Bearer ${token}` } }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => {
        const bytes = Buffer.concat(chunks);
        const contentType = String(res.headers["content-type"] ?? "");
        let body: Any = undefined;
        try {
          if (contentType.startsWith("application/json")) {
            body = JSON.parse(bytes.toString("utf8"));
            checkAgainstSpec("GET", rawPath, res.statusCode ?? 0, body);
          }
        } catch (err) {
          return reject(err as Error);
        }
        resolvePromise({ status: res.statusCode ?? 0, contentType, body, bytes });
      });
    });
    req.on("error", (err) => void gatewayState(g).then((state) => reject(new Error(`GET ${rawPath} failed (${err.message}); ${state}`))));
    req.end();
  });
}

// ---------------------------------------------------------------------------------------------
// Cluster and chat helpers
// ---------------------------------------------------------------------------------------------

interface Cluster {
  g1: Gateway;
  g2: Gateway;
  /** A fresh temporary directory; CHAT_MEDIA_DIR is `root/media` (shared by both gateways, like a volume). */
  root: string;
  mediaDir: string;
}

async function cluster(label: string, env: Record<string, string> = {}, worker = true): Promise<Cluster> {
  const prefix = freshPrefix(label);
  const root = mkdtempSync(join(tmpdir(), `chat-api-${label}-`));
  onTestFinished(() => rmSync(root, { recursive: true, force: true }));
  const mediaDir = join(root, "media");
  mkdirSync(mediaDir);
  const genv = { CHAT_MEDIA_DIR: mediaDir, ...env };
  const [g1, g2] = await Promise.all([startGateway(prefix, genv), startGateway(prefix, genv)]);
  if (worker) await startWorker(prefix);
  return { g1, g2, root, mediaDir };
}

let shared: Promise<Cluster> | null = null;

/**
 * One cluster (two gateways and a worker, no rate limit) for the tests that need nothing fresh of it
 * and look at no file in its media directory: each has users of its own.
 */
function sharedCluster(): Promise<Cluster> {
  return (shared ??= (async () => {
    const prefix = freshPrefix("api-shared");
    const root = mkdtempSync(join(tmpdir(), "chat-api-shared-"));
    atFileEnd(() => rmSync(root, { recursive: true, force: true }));
    const mediaDir = join(root, "media");
    mkdirSync(mediaDir);
    const env = { CHAT_MEDIA_DIR: mediaDir, CHAT_RATE_MESSAGES_PER_SECOND: "0" };
    const [g1, g2] = await Promise.all([startGateway(prefix, env, "file"), startGateway(prefix, env, "file")]);
    await startWorker(prefix, {}, "file");
    return { g1, g2, root, mediaDir };
  })());
}

/** Sends a chat message and resolves to the sender's own echo (proof it was accepted). */
async function say(chat: TestClient, text: string, extra: Json = {}): Promise<Frame> {
  const clientId = `${text}-${randomBytes(3).toString("hex")}`;
  chat.send({ type: "chat_message", message: text, client_id: clientId, ...extra });
  for (;;) {
    const f = await chat.next(undefined, 10000);
    if (f.type === "error") throw new Error(`message refused: ${JSON.stringify(f)}`);
    if (f.type === "chat_message" && f["client_id"] === clientId) return f;
  }
}

function roomId(a: string, b: string): string {
  return a < b ? `${a}:${b}` : `${b}:${a}`;
}

async function waitPersisted(a: string, b: string, n: number, timeoutMs = 15000) {
  return waitFor(async () => {
    const rows = await messagesBetween(a, b);
    expect(rows.length).toBe(n);
    return rows;
  }, timeoutMs);
}

async function positions(a: string, b: string): Promise<Map<string, bigint>> {
  const sql = testSql();
  const rows = await sql<{ id: string; stream_position: string }[]>`
    SELECT id, stream_position::text AS stream_position FROM messages WHERE room_id = ${roomId(a, b)}`;
  return new Map(rows.map((r) => [r.id, BigInt(r.stream_position)]));
}

function filesIn(dir: string): string[] {
  return existsSync(dir) ? readdirSync(dir) : [];
}

/** Every file under `dir`, recursively (relative paths). */
function walk(dir: string, base = dir): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? walk(join(dir, e.name), base) : [join(dir, e.name).slice(base.length + 1)],
  );
}

/**
 * Bytes of a given kind, `size` long in all: uploads are sniffed, so a test file starts
 * with its format's real signature.
 */
function fileBytes(kind: "png" | "jpeg" | "mp4" | "pdf", size: number): Buffer {
  const head = {
    png: Buffer.from("89504e470d0a1a0a0000000d49484452", "hex"),
    jpeg: Buffer.from("ffd8ffe000104a464946", "hex"),
    mp4: Buffer.from("000000186674797069736f6d", "hex"),
    pdf: Buffer.from("%PDF-1.7\n"),
  }[kind];
  return Buffer.concat([head, randomBytes(Math.max(0, size - head.length))]);
}

/** The signed media URL of an upload: our own path, ?expires=&sig=, never a token. */
function expectSignedLocation(location: string, identifier: string): void {
  expect(location).toMatch(new RegExp(`^/chat-media/${identifier.replace(".", "\\.")}\\?expires=\\d+&sig=[A-Za-z0-9_-]{43}$`));
}

const IDENTIFIER = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}\.[a-z0-9]{1,8}$/;

async function upload(g: Gateway, token: string | undefined, bytes: Uint8Array, type: string, filename = "file.bin"): Promise<ApiResult> {
  const form = new FormData();
  form.append("myFile", new Blob([new Uint8Array(bytes)], { type }), filename);
  return call(g, "/api/rooms/upload", { method: "POST", token, body: form });
}

/** A multipart body built by hand, so the file name reaches the server exactly as written. */
function multipart(field: string, filename: string, type: string, content: Buffer): { body: Uint8Array<ArrayBuffer>; contentType: string } {
  const boundary = `----chat-test-${randomBytes(8).toString("hex")}`;
  const head = Buffer.from(
    `--${boundary}\r\nContent-Disposition: form-data; name="${field}"; filename="${filename}"\r\nContent-Type: ${type}\r\n\r\n`,
  );
  return { body: new Uint8Array(Buffer.concat([head, content, Buffer.from(`\r\n--${boundary}--\r\n`)])), contentType: `multipart/form-data; boundary=${boundary}` };
}

// ---------------------------------------------------------------------------------------------

describe("HTTP API contract checker", () => {
  it("compiles every declared JSON response of docs/openapi.yaml strictly (no unknown keyword or key)", () => {
    // Every declared JSON response of every operation compiles, strictly (no unknown keyword, e.g. a
    // YAML flow mapping split by a comma inside a description).
    const defects: string[] = [];
    for (const [template, ops] of Object.entries(spec.paths as Record<string, Record<string, Any>>)) {
      for (const [method, op] of Object.entries(ops)) {
        for (const [status, response] of Object.entries(op.responses as Record<string, Any>)) {
          const r = typeof response.$ref === "string" ? resolveRef(response.$ref) : response;
          for (const key of Object.keys(response)) if (!["description", "content", "$ref", "headers"].includes(key)) defects.push(`${method} ${template} ${status}: unknown response key ${JSON.stringify(key)}`);
          if (!r.content?.["application/json"]) continue;
          const schema = responseSchema(template, method, Number(status));
          compiled(`${method.toUpperCase()} ${template} ${status}`, () => schema);
          try {
            strictAjv.compile(schema);
          } catch (err) {
            defects.push(`${method} ${template} ${status}: ${(err as Error).message}`);
          }
        }
      }
    }
    expect(defects).toEqual([]);
  });

  it("rejects bodies that break the contract (the checker can fail)", () => {
    const good = {
      messages: [
        {
          id: "0190a0a0-0000-7000-8000-000000000000",
          from_user: { username: "a" },
          to_user: { username: "b" },
          date_added: "2026-01-01T00:00:00.000Z",
          content: "hi",
          multimedia_url: null,
          read_by: ["b"],
        },
      ],
      next_cursor: null,
    };
    expect(() => checkAgainstSpec("GET", "/api/rooms/b/messages", 200, good)).not.toThrow();
    const bad = [
      { ...good, extra: 1 },
      { messages: [{ ...good.messages[0], id: "not-a-uuid" }], next_cursor: null },
      { messages: [{ ...good.messages[0], date_added: "yesterday" }], next_cursor: null },
      { messages: [{ ...good.messages[0], from_user: "a" }], next_cursor: null },
      { messages: [{ ...good.messages[0], read_by: "b" }], next_cursor: null },
      { messages: [{ ...good.messages[0], read_by: undefined }], next_cursor: null },
      { messages: [] },
    ];
    for (const b of bad) expect(() => checkAgainstSpec("GET", "/api/rooms/b/messages", 200, b)).toThrow(/does not match/);
    expect(() => checkAgainstSpec("GET", "/api/conversations", 200, { conversations: [{ id: "x" }], next_cursor: null })).toThrow(/does not match/);
    expect(() => checkAgainstSpec("GET", "/api/conversations", 418, { error: "x", message: "y" })).toThrow(/declares no 418/);
    expect(() => checkAgainstSpec("GET", "/nowhere", 404, { error: "x" })).toThrow(/does not match/);
  });
});

describe("GET /api/conversations", () => {
  it("lists the caller's conversations, most recent first, with last_message and the DB's unread_count, paged once each", async () => {
    const { g1, g2 } = await sharedCluster();
    const [alice, bob, carol, dave, erin] = ["alice", "bob", "carol", "dave", "erin"].map(uniqueUser) as [string, string, string, string, string];
    const [ta, tb, tc, te] = await Promise.all([tokenFor(alice), tokenFor(bob), tokenFor(carol), tokenFor(erin)]);
    const aToBob = await connectReady(g1.url, `/ws/${bob}/`, ta);
    const aToDave = await connectReady(g2.url, `/ws/${dave}/`, ta);
    const bob1 = await connectReady(g2.url, `/ws/${alice}/`, tb);
    const carol1 = await connectReady(g2.url, `/ws/${alice}/`, tc);
    const erin1 = await connectReady(g1.url, `/ws/${alice}/`, te);

    const last: Record<string, Frame> = {};
    last[bob] = await say(aToBob, "alice to bob");
    last[carol] = await say(carol1, "carol 1");
    last[carol] = await say(carol1, "carol 2");
    last[dave] = await say(aToDave, "alice to dave");
    last[erin] = await say(erin1, "erin 1");
    last[bob] = await say(bob1, "bob 1");
    // Alice reads bob's conversation: its unread count goes back to 0.
    aToBob.send({ type: "read_messages" });
    const expectedUnread: Record<string, number> = { [bob]: 0, [carol]: 2, [dave]: 0, [erin]: 1 };

    const sql = testSql();
    await waitFor(async () => {
      const rows = await sql<{ other_username: string; unread_count: number; last_message_id: string | null }[]>`
        SELECT other_username, unread_count, last_message_id FROM conversation_members WHERE username = ${alice}`;
      expect(Object.fromEntries(rows.map((r) => [r.other_username, [r.unread_count, r.last_message_id]]))).toEqual(
        Object.fromEntries(Object.entries(last).map(([o, f]) => [o, [expectedUnread[o], f["id"]]])),
      );
    }, 15000);

    // Most recent activity first; equal times (same millisecond) fall back to the partner, descending.
    const expectedOrder = Object.keys(last).sort((x, y) => {
      const dx = Date.parse(String(last[x]!["date_added"]));
      const dy = Date.parse(String(last[y]!["date_added"]));
      return dx !== dy ? dy - dx : x < y ? 1 : x > y ? -1 : 0;
    });

    const all = await call(g2, "/api/conversations", { token: ta });
    expect(all.status).toBe(200);
    expect(all.body.next_cursor).toBeNull();
    const conversations = all.body.conversations as Any[];
    expect(conversations.map((c) => c.other_user.username)).toEqual(expectedOrder);
    for (const c of conversations) {
      const other = c.other_user.username as string;
      expect(c.id).toBe(roomId(alice, other));
      expect(c.name).toBe(roomId(alice, other));
      expect(c.unread_count).toBe(await unreadOf(alice, other));
      expect(c.unread_count).toBe(expectedUnread[other]);
      const f = last[other]!;
      expect(c.last_message).toEqual({
        id: f["id"],
        from_user: f["from_user"],
        to_user: f["to_user"],
        date_added: new Date(String(f["date_added"])).toISOString(),
        content: f["message"],
        multimedia_url: null,
        client_id: f["client_id"],
      });
    }

    // Keyset pages of 1 and of 3 visit every conversation exactly once, in the same order.
    for (const limit of [1, 3]) {
      const seen: string[] = [];
      let cursor: string | null = null;
      let pages = 0;
      do {
        const page: ApiResult = await call(g1, `/api/conversations?limit=${limit}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`, { token: ta });
        expect(page.status).toBe(200);
        expect(page.body.conversations.length).toBeLessThanOrEqual(limit);
        seen.push(...page.body.conversations.map((c: Any) => c.other_user.username as string));
        cursor = page.body.next_cursor;
        expect(++pages).toBeLessThanOrEqual(10);
      } while (cursor);
      expect(seen).toEqual(expectedOrder);
    }

    // Bob sees only his own conversation with alice.
    const ofBob = await call(g1, "/api/conversations", { token: tb });
    expect(ofBob.body.conversations.map((c: Any) => c.other_user.username)).toEqual([alice]);
    expect(ofBob.body.conversations[0].unread_count).toBe(await unreadOf(bob, alice));

    // Refusals of the parameters.
    for (const q of ["limit=0", "limit=101", "limit=abc", "limit=-1", "limit=1.5", "cursor=not-a-cursor", `cursor=${Buffer.from("[1,2]").toString("base64url")}`]) {
      const r = await call(g1, `/api/conversations?${q}`, { token: ta });
      expect(r.status, q).toBe(400);
    }
    expect((await call(g1, "/api/conversations?limit=100", { token: ta })).status).toBe(200);
  });
});

describe("GET /api/rooms/{username}/messages", () => {
  it("pages newest first with before, then oldest first with after, visiting every message exactly once while new ones keep arriving", async () => {
    const { g1, g2 } = await sharedCluster();
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);
    const a = await connectReady(g1.url, `/ws/${bob}/`, ta);
    const b = await connectReady(g2.url, `/ws/${alice}/`, tb);
    const initial = 60;
    for (let i = 0; i < initial; i++) (i % 2 === 0 ? a : b).send({ type: "chat_message", message: `m${i}` });
    await a.until((f) => f.filter((x) => x.type === "chat_message").length === initial, 10000, "initial messages");
    await waitPersisted(alice, bob, initial);

    let sent = initial;
    const sendMore = () => {
      (sent % 2 === 0 ? a : b).send({ type: "chat_message", message: `m${sent}` });
      sent++;
    };
    const limit = 7;

    // 1. Newest first, following next_cursor as `before`, while messages arrive between the pages.
    const newestFirst: Any[] = [];
    let before: string | null = null;
    let pages = 0;
    do {
      const page: ApiResult = await call(before ? g2 : g1, `/api/rooms/${bob}/messages?limit=${limit}${before ? `&before=${before}` : ""}`, { token: ta });
      expect(page.status).toBe(200);
      if (page.body.next_cursor !== null) {
        expect(page.body.messages).toHaveLength(limit);
        expect(page.body.next_cursor).toBe(page.body.messages.at(-1).id);
      }
      newestFirst.push(...page.body.messages);
      before = page.body.next_cursor;
      sendMore();
      sendMore();
      expect(++pages).toBeLessThan(50);
    } while (before);

    // 2. Oldest first from the newest message the first walk saw, following `after`, as more arrive.
    const oldestFirst: Any[] = [];
    let after: string = newestFirst[0].id;
    const afterPage = async () => {
      const page = await call(g1, `/api/rooms/${alice}/messages?limit=${limit}&after=${after}`, { token: tb });
      expect(page.status).toBe(200);
      if (page.body.next_cursor !== null) {
        expect(page.body.messages).toHaveLength(limit);
        expect(page.body.next_cursor).toBe(page.body.messages.at(-1).id);
      }
      oldestFirst.push(...page.body.messages);
      if (page.body.messages.length > 0) after = page.body.messages.at(-1).id;
      return page;
    };
    for (let i = 0; i < 5; i++) {
      await afterPage();
      sendMore();
    }
    const total = sent;
    await a.until((f) => f.filter((x) => x.type === "chat_message").length === total, 10000, "all messages echoed");
    // Keep paging forward until every accepted message has been seen (the worker persists them meanwhile).
    await waitFor(async () => {
      let page;
      do page = await afterPage();
      while (page.body.next_cursor !== null);
      expect(newestFirst.length + oldestFirst.length).toBe(total);
    }, 15000);

    const rows = await waitPersisted(alice, bob, total);
    const pos = await positions(alice, bob);
    const walked = [...newestFirst].reverse().concat(oldestFirst);
    const ids = walked.map((m) => m.id as string);
    expect(new Set(ids).size).toBe(ids.length); // no duplicate
    expect(ids).toEqual(rows.map((r) => r.id)); // no gap, stream order
    // The order every socket saw is the order of the history.
    expect(a.ofType("chat_message").map((f) => f["id"])).toEqual(ids);
    for (let i = 1; i < ids.length; i++) expect(pos.get(ids[i]!)! > pos.get(ids[i - 1]!)!).toBe(true);
    // Each message as the socket delivered it.
    const byId = new Map(a.ofType("chat_message").map((f) => [f["id"], f]));
    for (const m of walked) {
      const f = byId.get(m.id)!;
      expect(m).toEqual({ id: f["id"], from_user: f["from_user"], to_user: f["to_user"], date_added: new Date(String(f["date_added"])).toISOString(), content: f["message"], multimedia_url: null, read_by: [] });
    }
  });

  it("takes limit from 1 to 200 (default 50) and refuses 0, 201, non-integers, bad cursors and a conversation with oneself", async () => {
    // 205 messages sent at once: the per-user send rate limit (if configured) is lifted for this setup step.
    const { g1, g2 } = await sharedCluster();
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);
    const a = await connectReady(g1.url, `/ws/${bob}/`, ta);
    const n = 205;
    for (let i = 0; i < n; i++) a.send({ type: "chat_message", message: `n${i}` });
    await a.until((f) => f.filter((x) => x.type === "chat_message").length === n, 15000, "all echoes");
    const rows = await waitPersisted(alice, bob, n, 20000);
    const newest = rows.map((r) => r.id).reverse();

    const page200 = await call(g2, `/api/rooms/${alice}/messages?limit=200`, { token: tb });
    expect(page200.status).toBe(200);
    expect(page200.body.messages.map((m: Any) => m.id)).toEqual(newest.slice(0, 200));
    expect(page200.body.next_cursor).toBe(newest[199]);
    const rest = await call(g1, `/api/rooms/${alice}/messages?limit=200&before=${page200.body.next_cursor}`, { token: tb });
    expect(rest.body.messages.map((m: Any) => m.id)).toEqual(newest.slice(200));
    expect(rest.body.next_cursor).toBeNull();

    const dflt = await call(g1, `/api/rooms/${bob}/messages`, { token: ta });
    expect(dflt.body.messages.map((m: Any) => m.id)).toEqual(newest.slice(0, 50));
    expect(dflt.body.next_cursor).toBe(newest[49]);
    const one = await call(g1, `/api/rooms/${bob}/messages/?limit=1`, { token: ta });
    expect(one.body.messages.map((m: Any) => m.id)).toEqual([newest[0]]);

    // after: oldest first, starting right after the pivot.
    const oldest = [...newest].reverse();
    const afterPage = await call(g1, `/api/rooms/${bob}/messages?after=${oldest[9]}&limit=5`, { token: ta });
    expect(afterPage.body.messages.map((m: Any) => m.id)).toEqual(oldest.slice(10, 15));
    expect(afterPage.body.next_cursor).toBe(oldest[14]);
    const tail = await call(g1, `/api/rooms/${bob}/messages?after=${newest[0]}`, { token: ta });
    expect(tail.body).toEqual({ messages: [], next_cursor: null });

    for (const q of ["limit=0", "limit=201", "limit=abc", "limit=-5", "limit=2.5", "limit=1e2", `before=${newest[0]}&after=${oldest[0]}`]) {
      const r = await call(g1, `/api/rooms/${bob}/messages?${q}`, { token: ta });
      expect(r.status, q).toBe(400);
      expect(r.body.messages).toBeUndefined();
    }
    for (const q of ["before=abc", "after=abc"]) {
      const r = await call(g1, `/api/rooms/${bob}/messages?${q}`, { token: ta });
      expect(r.status, q).toBe(400);
      expect(r.body.error, q).toBe("invalid_cursor");
    }
    const unknown = await call(g1, `/api/rooms/${bob}/messages?before=0190a0a0-0000-7000-8000-000000000000`, { token: ta });
    expect(unknown.status).toBe(404);
    expect((await call(g1, `/api/rooms/${alice}/messages`, { token: ta })).status).toBe(400);
    expect((await call(g1, `/api/rooms/${encodeURIComponent("no such/user!")}/messages`, { token: ta })).status).toBe(400);
  });
});

describe("authentication", () => {
  it("answers 401 on every endpoint without a token, with a bad one, an expired one or one signed with another secret", async () => {
    const { g1 } = await sharedCluster();
    const alice = uniqueUser("alice");
    const bad = [
      undefined,
      "garbage",
      await tokenFor(alice, { secret: "another-secret-entirely" }),
      await tokenFor(alice, { expiresInSeconds: -60 }),
      await tokenFor("not a valid username!"),
    ];
    const id = "0190a0a0-0000-7000-8000-000000000000";
    const gets = [
      "/api/conversations",
      `/api/rooms/${uniqueUser("bob")}/messages`,
      `/api/rooms/check-url/?message_id=${id}`,
      `/api/rooms/refresh-url/?message_id=${id}`,
      `/chat-media/${id}.png`,
    ];
    for (const token of bad) {
      for (const path of gets) {
        const r = await call(g1, path, { token });
        expect(r.status, `${path} with ${String(token).slice(0, 20)}`).toBe(401);
      }
      const up = await upload(g1, token, Buffer.from("x"), "text/plain");
      expect(up.status).toBe(401);
    }
    // A malformed Authorization header and a bad ?token= are refused too.
    expect((await call(g1, "/api/conversations", { headers: { authorization: `Basic ${Buffer.from("a:b").toString("base64")}` } })).status).toBe(401);
    expect((await call(g1, `/chat-media/${id}.png?token=garbage`)).status).toBe(401);
    // Refused uploads leave nothing behind.
    const sql = testSql();
    const [row] = await sql<{ n: number }[]>`SELECT count(*)::int AS n FROM uploads WHERE uploader = ${alice}`;
    expect(row!.n).toBe(0);
  });
});

describe("authentication of large uploads", () => {
  it("refuses an unauthenticated 1 MiB upload with 401 and keeps serving", async () => {
    const { g1, mediaDir } = await cluster("auth-big", {}, false);
    const alice = uniqueUser("alice");
    const r = await upload(g1, "garbage", fileBytes("png", 1024 * 1024), "image/png", "big.png");
    expect(r.status).toBe(401);
    // The node then still takes a real upload of the same size.
    const bytes = fileBytes("png", 1024 * 1024);
    const ok = await upload(g1, await tokenFor(alice), bytes, "image/png", "big.png");
    expect(ok.status).toBe(200);
    expect(filesIn(mediaDir)).toEqual([ok.body.file_identifier]);
    await expectAlive(g1);
  });
});

describe("authorization", () => {
  it("never shows a third user another conversation's messages, cursors, media URLs or files", async () => {
    const { g1, g2, mediaDir } = await cluster("authz");
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const carol = uniqueUser("carol");
    const [ta, tb, tc] = await Promise.all([tokenFor(alice), tokenFor(bob), tokenFor(carol)]);
    const a = await connectReady(g1.url, `/ws/${bob}/`, ta);
    const c = await connectReady(g2.url, `/ws/${alice}/`, tc);

    // Alice uploads a file: until a message references it, only she can read it.
    const bytes = fileBytes("png", 3000);
    const up = await upload(g1, ta, bytes, "image/png", "secret.png");
    expect(up.status).toBe(200);
    const fileId = up.body.file_identifier as string;
    expect((await call(g2, `/chat-media/${fileId}`, { token: ta })).status).toBe(200);
    expect((await call(g2, `/chat-media/${fileId}`, { token: tb })).status).toBe(404);
    expect((await call(g2, `/chat-media/${fileId}`, { token: tc })).status).toBe(404);

    const text = await say(a, "private to bob");
    const media = await say(a, "", { multimedia_url: up.body.file_location, file_identifier: fileId });
    const fromCarol = await say(c, "carol to alice");
    await waitPersisted(alice, bob, 2);
    await waitPersisted(alice, carol, 1);

    // Now bob (the other participant) may read it by header; a token in the URL is refused (media
    // URLs are signed instead); carol still may not.
    for (const g of [g1, g2]) {
      const viaHeader = await call(g, `/chat-media/${fileId}`, { token: tb });
      expect(viaHeader.status).toBe(200);
      expect(viaHeader.bytes.equals(bytes)).toBe(true);
      const viaQuery = await call(g, `/chat-media/${fileId}?token=${tb}`);
      expect(viaQuery.status).toBe(401);
      expect(viaQuery.bytes.includes(bytes.subarray(0, 64))).toBe(false);
      const carolHeader = await call(g, `/chat-media/${fileId}`, { token: tc });
      expect(carolHeader.status).toBe(404);
      expect(carolHeader.bytes.includes(bytes.subarray(0, 64))).toBe(false);
      expect((await call(g, `/chat-media/${fileId}?token=${tc}`)).status).toBe(401);
    }
    expect(filesIn(mediaDir)).toEqual([fileId]);

    // Carol's views: only her own conversation.
    const withAlice = await call(g1, `/api/rooms/${alice}/messages`, { token: tc });
    expect(withAlice.body.messages.map((m: Any) => m.id)).toEqual([fromCarol["id"]]);
    const withBob = await call(g1, `/api/rooms/${bob}/messages`, { token: tc });
    expect(withBob.body).toEqual({ messages: [], next_cursor: null });
    const carolsList = await call(g1, "/api/conversations", { token: tc });
    expect(carolsList.body.conversations.map((x: Any) => x.other_user.username)).toEqual([alice]);
    expect(carolsList.body.conversations[0].last_message.id).toBe(fromCarol["id"]);

    // Another conversation's message ids as cursors: 404, never that conversation's data.
    for (const id of [text["id"], media["id"]]) {
      for (const other of [alice, bob]) {
        for (const key of ["before", "after"]) {
          const r = await call(g2, `/api/rooms/${other}/messages?${key}=${id}`, { token: tc });
          expect(r.status, `${other} ${key}`).toBe(404);
          expect(JSON.stringify(r.body)).not.toContain("private to bob");
        }
      }
      expect((await call(g1, `/api/rooms/check-url/?message_id=${id}`, { token: tc })).status).toBe(404);
      expect((await call(g1, `/api/rooms/refresh-url/?message_id=${id}`, { token: tc })).status).toBe(404);
    }
    // Also alice's own cursor in the wrong conversation (her conversation with carol) is not found.
    expect((await call(g1, `/api/rooms/${carol}/messages?before=${text["id"]}`, { token: ta })).status).toBe(404);
    // The participants themselves are answered.
    // The message carries the signed URL of the upload: fresh, nothing to renew.
    expect((await call(g1, `/api/rooms/check-url/?message_id=${media["id"]}`, { token: tb })).body).toEqual({ refresh_url: false });
    expect((await call(g1, `/api/rooms/${alice}/messages?before=${media["id"]}`, { token: tb })).body.messages.map((m: Any) => m.id)).toEqual([text["id"]]);
    // The DB row of the media message is untouched by carol's refused refresh.
    const [row] = await testSql()<{ multimedia_url: string }[]>`SELECT multimedia_url FROM messages WHERE id = ${media["id"] as string}`;
    expect(row!.multimedia_url).toBe(up.body.file_location);
  });

  it("does not let a third user gain access to someone else's upload by referencing its identifier in her own message", async () => {
    const { g1, g2 } = await sharedCluster();
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const carol = uniqueUser("carol");
    const dave = uniqueUser("dave");
    const [ta, tb, tc] = await Promise.all([tokenFor(alice), tokenFor(bob), tokenFor(carol)]);
    const a = await connectReady(g1.url, `/ws/${bob}/`, ta);
    const c = await connectReady(g2.url, `/ws/${dave}/`, tc);
    const bytes = fileBytes("jpeg", 500);
    const up = await upload(g1, ta, bytes, "image/jpeg", "holiday.jpg");
    expect(up.status).toBe(200);
    const fileId = up.body.file_identifier as string;
    await say(a, "", { multimedia_url: up.body.file_location, file_identifier: fileId });
    await waitPersisted(alice, bob, 1);
    expect((await call(g2, `/chat-media/${fileId}`, { token: tb })).status).toBe(200);

    // Carol learned the identifier (e.g. a forwarded link) and references it in her own conversation:
    // the gateway refuses the message (only one's own uploads may be referenced), and nothing is stored.
    c.send({ type: "chat_message", message: "", multimedia_url: `/chat-media/${fileId}`, file_identifier: fileId, client_id: "claim" });
    expect(await c.next("error")).toMatchObject({ code: "invalid_media_url", client_id: "claim" });
    await say(c, "after the refusal");
    await waitPersisted(carol, dave, 1);
    expect((await messagesBetween(carol, dave)).map((m) => m.content)).toEqual(["after the refusal"]);
    const r = await call(g1, `/chat-media/${fileId}`, { token: tc });
    expect(r.bytes.equals(bytes), "carol downloaded alice's file").toBe(false);
    expect(r.status).toBe(404);
  });
});

describe("uploads and media", () => {
  it("stores a multipart upload under a server-chosen identifier and serves the identical bytes back on both nodes", async () => {
    const { g1, g2, mediaDir } = await cluster("upload");
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);

    const small = fileBytes("png", 4096);
    const big = fileBytes("mp4", 3 * 1024 * 1024 + 17); // several chunks each way: streamed with backpressure
    const results: [Buffer, string, ApiResult][] = [];
    for (const [bytes, type, ext] of [
      [small, "image/png", "png"],
      [big, "video/mp4", "mp4"],
      [Buffer.from("plain text\n"), "text/plain", "txt"],
      [fileBytes("pdf", 100), "application/pdf", "pdf"],
    ] as const) {
      const r = await upload(g1, ta, bytes, type, `my file.${ext}`);
      expect(r.status).toBe(200);
      expect(r.body.file_identifier).toMatch(IDENTIFIER);
      expect(r.body.file_identifier.endsWith(`.${ext}`)).toBe(true);
      expectSignedLocation(r.body.file_location, r.body.file_identifier);
      expect(new Date(r.body.expiration_time).getTime()).toBeGreaterThan(Date.now());
      results.push([bytes, type, r]);
    }
    expect(filesIn(mediaDir).sort()).toEqual(results.map(([, , r]) => r.body.file_identifier as string).sort());
    for (const [bytes, type, r] of results) {
      expect(readFileSync(join(mediaDir, r.body.file_identifier)).equals(bytes)).toBe(true);
      for (const g of [g1, g2]) {
        const got = await call(g, r.body.file_location, { token: ta });
        expect(got.status).toBe(200);
        expect(got.contentType).toBe(type);
        expect(got.bytes.length).toBe(bytes.length);
        expect(got.bytes.equals(bytes)).toBe(true);
      }
    }
    const sql = testSql();
    const rows = await sql<{ identifier: string; content_type: string; size_bytes: string; storage: string }[]>`
      SELECT identifier, content_type, size_bytes::text, storage FROM uploads WHERE uploader = ${alice} ORDER BY identifier`;
    expect(rows).toEqual(
      results
        .map(([bytes, type, r]) => ({ identifier: r.body.file_identifier, content_type: type, size_bytes: String(bytes.length), storage: "local" }))
        .sort((x, y) => (x.identifier < y.identifier ? -1 : 1)),
    );

    // A message that carries the file's signed URL: check-url is false while it is fresh, refresh-url signs a new one.
    const a = await connectReady(g2.url, `/ws/${bob}/`, ta);
    const [, , png] = results[0]!;
    const media = await say(a, "look", { multimedia_url: png.body.file_location, file_identifier: png.body.file_identifier });
    const plain = await say(a, "no file");
    await waitPersisted(alice, bob, 2);
    for (const [token, g] of [[ta, g1], [tb, g2]] as const) {
      const check = await call(g, `/api/rooms/check-url/?message_id=${media["id"]}`, { token });
      expect(check).toMatchObject({ status: 200, body: { refresh_url: false } });
      const refresh = await call(g, `/api/rooms/refresh-url/?message_id=${media["id"]}`, { token });
      expect(refresh.status).toBe(200);
      expectSignedLocation(refresh.body.file_location, png.body.file_identifier);
      expect((await call(g, `/api/rooms/check-url?message_id=${plain["id"]}`, { token })).body).toEqual({ refresh_url: false });
      expect((await call(g, `/api/rooms/refresh-url/?message_id=${plain["id"]}`, { token })).status).toBe(404);
    }
    const [row] = await sql<{ multimedia_url: string }[]>`SELECT multimedia_url FROM messages WHERE id = ${media["id"] as string}`;
    expectSignedLocation(row!.multimedia_url, png.body.file_identifier);
    // A message that carries the bare path (an older client) is renewed into a signed URL.
    const bare = await say(a, "bare", { multimedia_url: `/chat-media/${png.body.file_identifier}`, file_identifier: png.body.file_identifier });
    await waitPersisted(alice, bob, 3);
    expect((await call(g1, `/api/rooms/check-url/?message_id=${bare["id"]}`, { token: tb })).body).toEqual({ refresh_url: true });
    // A missing or malformed message_id is the caller's mistake (400); a well-formed unknown one is 404.
    for (const [q, status] of [["", 400], ["message_id=", 400], ["message_id=abc", 400], ["message_id=0190a0a0-0000-7000-8000-000000000000", 404]] as const) {
      expect((await call(g1, `/api/rooms/check-url/?${q}`, { token: ta })).status, q).toBe(status);
      expect((await call(g1, `/api/rooms/refresh-url/?${q}`, { token: ta })).status, q).toBe(status);
    }
  });

  it.each([
    ["just over the limit (refused while streaming)", 1025],
    ["a few times the limit (refused while streaming)", 4096],
    ["far over the limit (refused from Content-Length)", 200 * 1024],
  ])("refuses an upload %s with 413, leaves no file behind and keeps serving", async (_what, size) => {
    const { g1, g2, mediaDir } = await cluster("limit", { CHAT_UPLOAD_MAX_BYTES: "1024" }, false);
    const alice = uniqueUser("alice");
    const ta = await tokenFor(alice);
    const r = await upload(g1, ta, fileBytes("png", size), "image/png", "big.png");
    expect(r.status).toBe(413);
    expect(r.body.error).toBeTypeOf("string");
    expect(filesIn(mediaDir)).toEqual([]);
    // Exactly the limit is accepted by the same node afterwards, and is then the only file.
    const exact = fileBytes("png", 1024);
    const ok = await upload(g1, ta, exact, "image/png", "exact.png");
    expect(ok.status).toBe(200);
    expect(filesIn(mediaDir)).toEqual([ok.body.file_identifier]);
    expect((await call(g2, ok.body.file_location, { token: ta })).bytes.equals(exact)).toBe(true);
    const [row] = await testSql()<{ n: number }[]>`SELECT count(*)::int AS n FROM uploads WHERE uploader = ${alice}`;
    expect(row!.n).toBe(1);
    await expectAlive(g1);
  });

  it("refuses a disallowed content type with 415, and a request without the file with 400, storing nothing", async () => {
    const { g1, mediaDir } = await cluster("types", {}, false);
    const alice = uniqueUser("alice");
    const ta = await tokenFor(alice);
    for (const type of ["application/x-msdownload", "text/html", "application/javascript", "imagex/png"]) {
      // A Windows executable (binary, no format we store), whatever it is declared as.
      const r = await upload(g1, ta, Buffer.concat([Buffer.from("4d5a90000300000004000000ffff0000", "hex"), randomBytes(64)]), type, "x.exe");
      expect(r.status, type).toBe(415);
    }
    const wrongField = new FormData();
    wrongField.append("otherFile", new Blob([Buffer.from("x")], { type: "image/png" }), "x.png");
    expect((await call(g1, "/api/rooms/upload", { method: "POST", token: ta, body: wrongField })).status).toBe(400);
    expect((await call(g1, "/api/rooms/upload", { method: "POST", token: ta, body: "just text", headers: { "content-type": "text/plain" } })).status).toBe(400);
    // A large disallowed file is refused too (once its first bytes are sniffed), and the node keeps serving.
    expect((await upload(g1, ta, Buffer.concat([Buffer.from("4d5a9000", "hex"), randomBytes(3 * 1024 * 1024)]), "application/x-msdownload", "big.exe")).status).toBe(415);
    expect(filesIn(mediaDir)).toEqual([]);
    const [row] = await testSql()<{ n: number }[]>`SELECT count(*)::int AS n FROM uploads WHERE uploader = ${alice}`;
    expect(row!.n).toBe(0);
    await expectAlive(g1);
  });

  it("contains path traversal: downloads outside the media directory are refused and a client file name never picks the stored path", async () => {
    const { g1, root, mediaDir } = await cluster("traversal", {}, false);
    const alice = uniqueUser("alice");
    const ta = await tokenFor(alice);
    const secret = `TOP-SECRET-${randomBytes(6).toString("hex")}`;
    writeFileSync(join(root, "secret.txt"), secret);
    // A file in the media directory that no upload registered (a valid-looking name) is not served either.
    const planted = "0190a0a0-0000-7000-8000-000000000001.txt";
    writeFileSync(join(mediaDir, planted), secret);

    const attempts = [
      "/chat-media/..%2F..%2Fetc%2Fpasswd",
      "/chat-media/..%2Fsecret.txt",
      "/chat-media/%2E%2E%2Fsecret.txt",
      "/chat-media/..%5Csecret.txt",
      `/chat-media/${encodeURIComponent(join(root, "secret.txt"))}`,
      "/chat-media/%2Fetc%2Fpasswd",
      `/chat-media/${planted}`,
      `/chat-media/${planted}%00.png`,
    ];
    for (const path of attempts) {
      const r = await call(g1, path, { token: ta });
      expect(r.status, path).toBe(404);
      expect(r.bytes.toString(), path).not.toContain(secret);
      expect(r.bytes.toString(), path).not.toContain("root:");
    }
    const raw = ["/chat-media/../secret.txt", "/chat-media/../../etc/passwd", "/chat-media/a/b", "/chat-media//etc/passwd", "/chat-media/./../secret.txt", `/chat-media/${planted}/../../secret.txt`];
    for (const path of raw) {
      const r = await rawGet(g1, path, ta);
      expect(r.status, path).toBeGreaterThanOrEqual(400);
      expect(r.status, path).toBeLessThan(500);
      expect(r.bytes.toString(), path).not.toContain(secret);
      expect(r.bytes.toString(), path).not.toContain("root:");
    }

    // Uploads whose file names try to climb out, or name an absolute path: stored inside CHAT_MEDIA_DIR under the server's name.
    const tag = randomBytes(4).toString("hex");
    const names = [`../../evil-${tag}.txt`, `../evil-${tag}.txt`, `${join(root, `abs-${tag}.txt`)}`, `..\\..\\evil-${tag}.txt`, `sub/dir/evil-${tag}.txt`];
    const stored: string[] = [];
    for (const filename of names) {
      const content = Buffer.from(`payload for ${filename}`);
      const { body, contentType } = multipart("myFile", filename, "text/plain", content);
      const r = await call(g1, "/api/rooms/upload", { method: "POST", token: ta, body, headers: { "content-type": contentType } });
      expect(r.status, filename).toBe(200);
      const id = r.body.file_identifier as string;
      expect(id, filename).toMatch(IDENTIFIER);
      expect(id).not.toContain("evil");
      expectSignedLocation(r.body.file_location, id);
      const path = realpathSync(join(mediaDir, id));
      expect(path.startsWith(realpathSync(mediaDir) + sep)).toBe(true);
      expect(dirname(path)).toBe(realpathSync(mediaDir));
      expect(readFileSync(path).equals(content)).toBe(true);
      expect((await call(g1, r.body.file_location, { token: ta })).bytes.equals(content)).toBe(true);
      stored.push(id);
    }
    expect(filesIn(mediaDir).sort()).toEqual([...stored, planted].sort());
    expect(walk(root).sort()).toEqual(["secret.txt", ...[...stored, planted].map((s) => join("media", s))].sort());
    for (const filename of names) {
      for (const base of [mediaDir, root, REPO_ROOT, join(REPO_ROOT, ".data/media")]) {
        expect(existsSync(resolve(base, filename)), `${filename} relative to ${base}`).toBe(false);
      }
    }
    expect(existsSync(join(tmpdir(), `evil-${tag}.txt`))).toBe(false);
    await expectAlive(g1);
  });
});
