import { createHash, createHmac, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
// @ts-expect-error s3rver ships no type declarations
import S3rver from "s3rver";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";
import {
  connectReady,
  freshPrefix,
  messagesBetween,
  startGateway,
  startWorker,
  testSql,
  tokenFor,
  uniqueUser,
  waitFor,
  type Frame,
  type TestClient,
} from "./helpers/index.js";
// The built module, in-process: no mock of it, only a fixed clock handed to it.
import { S3MediaStorage } from "../../../apps/gateway/dist/media/s3-storage.js";
import { needsRefresh, REFRESH_MARGIN_MS } from "../../../apps/gateway/dist/media/storage.js";

const ACCESS_KEY = "AKIDCHATTESTEXAMPLE";
const SECRET_KEY = "chat-test-secret-key-not-a-real-one";
const saved: Record<string, string | undefined> = {};

beforeAll(() => {
  for (const k of ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_EC2_METADATA_DISABLED"]) saved[k] = process.env[k];
  process.env["AWS_ACCESS_KEY_ID"] = ACCESS_KEY;
  process.env["AWS_SECRET_ACCESS_KEY"] = SECRET_KEY;
  delete process.env["AWS_SESSION_TOKEN"];
  process.env["AWS_EC2_METADATA_DISABLED"] = "true";
});
afterAll(() => {
  for (const [k, v] of Object.entries(saved)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
});

const ID = "0190a0a0-1111-7222-8333-444455556666.png";

function amzDate(d: Date): string {
  return d.toISOString().replace(/[-:]/g, "").replace(/\.\d{3}/, "");
}

const rfc3986 = (s: string) => encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
const hmac = (key: Buffer | string, data: string) => createHmac("sha256", key).update(data).digest();

/** The SigV4 query signature of a presigned GET, computed independently of the AWS SDK. */
function expectedSignature(url: URL, secret: string, region: string): string {
  const params = [...url.searchParams.entries()].filter(([k]) => k !== "X-Amz-Signature");
  const query = params
    .map(([k, v]) => [rfc3986(k), rfc3986(v)] as const)
    .sort(([a, x], [b, y]) => (a < b ? -1 : a > b ? 1 : x < y ? -1 : 1))
    .map(([k, v]) => `${k}=${v}`)
    .join("&");
  const signedHeaders = url.searchParams.get("X-Amz-SignedHeaders")!;
  expect(signedHeaders).toBe("host");
  const canonical = ["GET", url.pathname, query, `host:${url.host}\n`, signedHeaders, "UNSIGNED-PAYLOAD"].join("\n");
  const date = url.searchParams.get("X-Amz-Date")!;
  const scope = `${date.slice(0, 8)}/${region}/s3/aws4_request`;
  const toSign = ["AWS4-HMAC-SHA256", date, scope, createHash("sha256").update(canonical).digest("hex")].join("\n");
  const key = hmac(hmac(hmac(hmac(`AWS4${secret}`, date.slice(0, 8)), region), "s3"), "aws4_request");
  return createHmac("sha256", key).update(toSign).digest("hex");
}

describe("S3 presigned URLs with a controlled clock (in-process)", () => {
  it("signs with the injected clock: X-Amz-Date is that instant, X-Amz-Expires the TTL, expiresAt = now + TTL", async () => {
    let now = new Date("2031-05-06T07:08:09.000Z");
    const ttl = 900;
    const storage = new S3MediaStorage({ bucket: "chat-media", region: "eu-west-3", endpoint: "http://127.0.0.1:9", forcePathStyle: true, urlTtlSeconds: ttl, now: () => now });

    const first = await storage.locate(ID);
    const url = new URL(first.url);
    expect(url.origin).toBe("http://127.0.0.1:9");
    expect(url.pathname).toBe(`/chat-media/${ID}`);
    expect(url.searchParams.get("X-Amz-Algorithm")).toBe("AWS4-HMAC-SHA256");
    expect(url.searchParams.get("X-Amz-Date")).toBe("20310506T070809Z");
    expect(url.searchParams.get("X-Amz-Expires")).toBe(String(ttl));
    expect(url.searchParams.get("X-Amz-Credential")).toBe(`${ACCESS_KEY}/20310506/eu-west-3/s3/aws4_request`);
    expect(url.searchParams.get("X-Amz-Signature")).toMatch(/^[0-9a-f]{64}$/);
    expect(url.searchParams.get("X-Amz-Signature")).toBe(expectedSignature(url, SECRET_KEY, "eu-west-3"));
    expect(first.expiresAt).toEqual(new Date(now.getTime() + ttl * 1000));
    expect(first.url).not.toContain(SECRET_KEY);

    // Deterministic for the same instant; a later instant changes the date, the signature and the expiry.
    expect((await storage.locate(ID)).url).toBe(first.url);
    now = new Date("2031-12-31T23:59:59.000Z");
    const later = await storage.locate(ID);
    const laterUrl = new URL(later.url);
    expect(laterUrl.searchParams.get("X-Amz-Date")).toBe("20311231T235959Z");
    expect(laterUrl.searchParams.get("X-Amz-Credential")).toBe(`${ACCESS_KEY}/20311231/eu-west-3/s3/aws4_request`);
    expect(laterUrl.searchParams.get("X-Amz-Signature")).not.toBe(url.searchParams.get("X-Amz-Signature"));
    expect(laterUrl.searchParams.get("X-Amz-Signature")).toBe(expectedSignature(laterUrl, SECRET_KEY, "eu-west-3"));
    expect(later.expiresAt!.getTime()).toBe(Date.parse("2031-12-31T23:59:59.000Z") + ttl * 1000);
    // Nothing about the wall clock leaks in.
    expect(later.url).not.toContain(amzDate(new Date()).slice(0, 8));
  });

  it.each([60, 3600, 7 * 24 * 3600])("carries a TTL of %i s as X-Amz-Expires and in expiresAt", async (ttl) => {
    const now = new Date("2030-02-03T04:05:06.789Z");
    const storage = new S3MediaStorage({ bucket: "b", region: "us-east-1", endpoint: "http://127.0.0.1:9", forcePathStyle: true, urlTtlSeconds: ttl, now: () => now });
    const { url, expiresAt } = await storage.locate(ID);
    const u = new URL(url);
    expect(u.searchParams.get("X-Amz-Expires")).toBe(String(ttl));
    expect(u.searchParams.get("X-Amz-Date")).toBe("20300203T040506Z");
    expect(expiresAt!.getTime() - now.getTime()).toBe(ttl * 1000);
  });

  it("needsRefresh is false well before expiry, true within 60 s of it and after it", async () => {
    const now = new Date("2030-01-01T00:00:00.000Z");
    const storage = new S3MediaStorage({ bucket: "b", region: "us-east-1", endpoint: "http://127.0.0.1:9", forcePathStyle: true, urlTtlSeconds: 3600, now: () => now });
    const { expiresAt } = await storage.locate(ID);
    const at = (msBeforeExpiry: number) => new Date(expiresAt!.getTime() - msBeforeExpiry);
    expect(REFRESH_MARGIN_MS).toBe(60_000);
    expect(needsRefresh(expiresAt, now)).toBe(false);
    expect(needsRefresh(expiresAt, at(30 * 60_000))).toBe(false);
    expect(needsRefresh(expiresAt, at(61_000))).toBe(false);
    expect(needsRefresh(expiresAt, at(60_001))).toBe(false);
    expect(needsRefresh(expiresAt, at(60_000))).toBe(true);
    expect(needsRefresh(expiresAt, at(59_999))).toBe(true);
    expect(needsRefresh(expiresAt, at(1_000))).toBe(true);
    expect(needsRefresh(expiresAt, at(0))).toBe(true);
    expect(needsRefresh(expiresAt, at(-1_000))).toBe(true);
    expect(needsRefresh(expiresAt, at(-86_400_000))).toBe(true);
    // Local storage: no expiry, never refreshed.
    expect(needsRefresh(null, now)).toBe(false);
  });
});

// ---------------------------------------------------------------------------------------------
// A real gateway with CHAT_MEDIA_STORAGE=s3 against s3rver (a local S3-compatible server on loopback).
// ---------------------------------------------------------------------------------------------

async function startS3(bucket: string): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), "chat-s3rver-"));
  const server = new S3rver({ port: 0, address: "127.0.0.1", silent: true, directory: dir, configureBuckets: [{ name: bucket, configs: [] }] });
  const info = (await server.run()) as { port: number };
  onTestFinished(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return `http://127.0.0.1:${info.port}`;
}

async function say(chat: TestClient, extra: Record<string, unknown>): Promise<Frame> {
  const clientId = randomBytes(4).toString("hex");
  chat.send({ type: "chat_message", message: "", client_id: clientId, ...extra });
  for (;;) {
    const f = await chat.next(undefined, 10000);
    if (f.type === "error") throw new Error(`refused: ${JSON.stringify(f)}`);
    if (f.type === "chat_message" && f["client_id"] === clientId) return f;
  }
}

async function getJson(base: string, path: string, token: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(`${base}${path}`, { headers: { authorization: `Bearer ${token}` } });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

describe("S3 storage through a real gateway (s3rver on loopback)", () => {
  it("uploads to the bucket, hands out presigned URLs that work and expire, and check-url/refresh-url follow the expiry", async () => {
    const bucket = "chat-media";
    const endpoint = await startS3(bucket);
    const prefix = freshPrefix("s3");
    const ttl = 600;
    const env = {
      CHAT_MEDIA_STORAGE: "s3",
      CHAT_S3_BUCKET: bucket,
      CHAT_S3_ENDPOINT: endpoint,
      CHAT_S3_FORCE_PATH_STYLE: "true",
      CHAT_S3_REGION: "us-east-1",
      CHAT_S3_URL_TTL_SECONDS: String(ttl),
      // s3rver's fixed credentials, through the SDK's default chain as in production.
      AWS_ACCESS_KEY_ID: "S3RVER",
      AWS_SECRET_ACCESS_KEY: "S3RVER",
      AWS_EC2_METADATA_DISABLED: "true",
    };
    const g = await startGateway(prefix, env);
    await startWorker(prefix);
    const base = `http://127.0.0.1:${g.port}`;
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);

    // A JPEG by its bytes (uploads are sniffed), declared as something else: the object gets the sniffed type.
    const bytes = Buffer.concat([Buffer.from("ffd8ffe000104a464946", "hex"), randomBytes(256 * 1024 + 3)]);
    const form = new FormData();
    form.append("myFile", new Blob([bytes], { type: "application/octet-stream" }), "photo.svg");
    const before = Date.now();
    const res = await fetch(`${base}/api/rooms/upload`, { method: "POST", body: form, headers: { authorization: `Bearer ${ta}` } });
    const up = (await res.json()) as { file_location: string; file_identifier: string; expiration_time: string };
    expect(res.status, JSON.stringify(up)).toBe(200);
    expect(up.file_identifier).toMatch(/^[0-9a-f-]{36}\.jpg$/);
    const location = new URL(up.file_location);
    expect(location.origin).toBe(endpoint);
    expect(location.pathname).toBe(`/${bucket}/${up.file_identifier}`);
    expect(location.searchParams.get("X-Amz-Expires")).toBe(String(ttl));
    const expires = Date.parse(up.expiration_time);
    expect(expires).toBeGreaterThanOrEqual(before + ttl * 1000);
    expect(expires).toBeLessThanOrEqual(Date.now() + ttl * 1000);
    // The presigned URL serves the identical bytes; the gateway does not serve S3 files itself.
    const got = await fetch(up.file_location);
    expect(got.status).toBe(200);
    expect(Buffer.from(await got.arrayBuffer()).equals(bytes)).toBe(true);
    expect(got.headers.get("content-type")).toBe("image/jpeg");
    expect(got.headers.get("content-disposition")).toMatch(/^inline/);
    expect((await fetch(`${base}/chat-media/${up.file_identifier}`, { headers: { authorization: `Bearer ${ta}` } })).status).toBe(404);
    // The same object signed with a clock past the TTL is refused by the store: the expiry is real.
    const stale = new S3MediaStorage({ bucket, region: "us-east-1", endpoint, forcePathStyle: true, urlTtlSeconds: 60, now: () => new Date(Date.now() - 61_000) });
    expect((await fetch((await stale.locate(up.file_identifier)).url)).status).toBe(403);

    // Messages carrying the file with three expiries: fresh, within the minute, past.
    const a = await connectReady(base.replace("http", "ws"), `/ws/${bob}/`, ta);
    const fresh = await say(a, { multimedia_url: up.file_location, file_identifier: up.file_identifier, multimedia_url_expiration: up.expiration_time });
    const soon = await say(a, { multimedia_url: up.file_location, file_identifier: up.file_identifier, multimedia_url_expiration: new Date(Date.now() + 30_000).toISOString() });
    // The file's own location (a message may reference nothing else), as a client holds it an hour later.
    const past = await say(a, { multimedia_url: up.file_location, file_identifier: up.file_identifier, multimedia_url_expiration: new Date(Date.now() - 3_600_000).toISOString() });
    await waitFor(async () => expect(await messagesBetween(alice, bob)).toHaveLength(3), 15000);

    expect((await getJson(base, `/api/rooms/check-url/?message_id=${String(fresh["id"])}`, tb)).body).toEqual({ refresh_url: false });
    expect((await getJson(base, `/api/rooms/check-url/?message_id=${String(soon["id"])}`, tb)).body).toEqual({ refresh_url: true });
    expect((await getJson(base, `/api/rooms/check-url/?message_id=${String(past["id"])}`, ta)).body).toEqual({ refresh_url: true });

    const refreshed = await getJson(base, `/api/rooms/refresh-url/?message_id=${String(past["id"])}`, tb);
    expect(refreshed.status).toBe(200);
    const newUrl = String(refreshed.body["file_location"]);
    expect(new URL(newUrl).pathname).toBe(`/${bucket}/${up.file_identifier}`);
    const again = await fetch(newUrl);
    expect(again.status).toBe(200);
    expect(Buffer.from(await again.arrayBuffer()).equals(bytes)).toBe(true);
    const [row] = await testSql()<{ multimedia_url: string; exp: string }[]>`
      SELECT multimedia_url, multimedia_url_expiration::text AS exp FROM messages WHERE id = ${String(past["id"])}`;
    expect(row!.multimedia_url).toBe(newUrl);
    expect(Date.parse(row!.exp) - Date.now()).toBeGreaterThan((ttl - 30) * 1000);
    expect((await getJson(base, `/api/rooms/check-url/?message_id=${String(past["id"])}`, ta)).body).toEqual({ refresh_url: false });
    // A message without a file is never to be refreshed, and has nothing to refresh.
    const text = await say(a, { message: "plain" });
    await waitFor(async () => expect(await messagesBetween(alice, bob)).toHaveLength(4), 15000);
    expect((await getJson(base, `/api/rooms/check-url/?message_id=${String(text["id"])}`, tb)).body).toEqual({ refresh_url: false });
    expect((await getJson(base, `/api/rooms/refresh-url/?message_id=${String(text["id"])}`, tb)).status).toBe(404);
  });
});
