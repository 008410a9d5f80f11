import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { connect as netConnect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { v7 as uuidv7 } from "uuid";
import { describe, expect, it, onTestFinished } from "vitest";
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
  type Gateway,
} from "./helpers/index.js";

// Issue 13, points 1, 2, 6 and 13: what an attacker can do with the upload endpoint and the media it
// serves, through real gateway processes (local storage in a temporary directory).

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Any = any;

const MiB = 1024 * 1024;
const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
const IHDR = Buffer.from("0000000d49484452000000010000000108060000001f15c489", "hex");

/** A PNG header followed by filler: enough for any sniffer, `size` bytes in all. */
function png(size = 64): Buffer {
  const head = Buffer.concat([PNG_SIGNATURE, IHDR]);
  return Buffer.concat([head, randomBytes(Math.max(0, size - head.length))]);
}

const SVG = Buffer.from(
  `<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" onload="localStorage.setItem('xss','1')"><script>document.title='pwned'</script></svg>\n`,
);
const HTML = Buffer.from(`<!doctype html><html><body><script>document.title='pwned'</script></body></html>`);
const PDF = Buffer.concat([Buffer.from("%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n"), randomBytes(64)]);

interface Media {
  root: string;
  mediaDir: string;
}

function mediaDirs(label: string): Media {
  const root = mkdtempSync(join(tmpdir(), `chat-upsec-${label}-`));
  onTestFinished(() => rmSync(root, { recursive: true, force: true }));
  const mediaDir = join(root, "media");
  mkdirSync(mediaDir);
  return { root, mediaDir };
}

function filesIn(dir: string): string[] {
  return existsSync(dir) ? readdirSync(dir).sort() : [];
}

function base(g: Gateway): string {
  return `http://127.0.0.1:${g.port}`;
}

async function upload(g: Gateway, token: string, bytes: Uint8Array, type: string, filename: string) {
  const form = new FormData();
  form.append("myFile", new Blob([new Uint8Array(bytes)], { type }), filename);
  const res = await fetch(`${base(g)}/api/rooms/upload`, { method: "POST", headers: { authorization: `Bearer ${token}` }, body: form });
  const text = await res.text();
  let body: Any = null;
  try {
    body = JSON.parse(text);
  } catch {
    body = text;
  }
  return { status: res.status, body };
}

async function get(g: Gateway, path: string, headers: Record<string, string> = {}) {
  const res = await fetch(`${base(g)}${path}`, { headers });
  return { status: res.status, headers: res.headers, bytes: Buffer.from(await res.arrayBuffer()) };
}

/** The gateway's open file descriptors (Linux). */
function fdCount(g: Gateway): number {
  return readdirSync(`/proc/${g.child.pid}/fd`).length;
}

describe("uploads are sniffed, never trusted", () => {
  it("refuses SVG and HTML whatever their declared type or name, and stores a file as the type its bytes are", async () => {
    const { mediaDir } = mediaDirs("sniff");
    const g = await startGateway(freshPrefix("upsec-sniff"), { CHAT_MEDIA_DIR: mediaDir });
    const alice = uniqueUser("alice");
    const token = await tokenFor(alice);

    for (const [bytes, type, name] of [
      [SVG, "image/svg+xml", "cat.svg"],
      [SVG, "image/png", "cat.png"],
      [SVG, "text/plain", "cat.txt"],
      [HTML, "text/plain", "note.txt"],
      [HTML, "image/jpeg", "photo.jpg"],
      [Buffer.concat([Buffer.from("\ufeff  \n"), SVG]), "image/gif", "x.gif"],
    ] as const) {
      const r = await upload(g, token, bytes, type, name);
      expect(r, `${name} declared ${type}`).toMatchObject({ status: 415, body: { error: "unsupported_media_type" } });
    }
    expect(filesIn(mediaDir)).toEqual([]);

    // Real bytes decide, under any declared type or name.
    const asPng = await upload(g, token, png(), "application/octet-stream", "evil.svg");
    expect(asPng.status).toBe(200);
    expect(asPng.body.file_identifier).toMatch(/\.png$/);
    const asPdf = await upload(g, token, PDF, "image/png", "x.png");
    expect(asPdf.status).toBe(200);
    expect(asPdf.body.file_identifier).toMatch(/\.pdf$/);
    const rows = await testSql()<{ identifier: string; content_type: string }[]>`
      SELECT identifier, content_type FROM uploads WHERE uploader = ${alice} ORDER BY identifier`;
    expect(Object.fromEntries(rows.map((r) => [r.identifier, r.content_type]))).toEqual({
      [asPng.body.file_identifier]: "image/png",
      [asPdf.body.file_identifier]: "application/pdf",
    });
    expect(filesIn(mediaDir)).toEqual([asPng.body.file_identifier, asPdf.body.file_identifier].sort());
  });

  it("serves media through short-lived signed URLs with nosniff, a sandbox CSP and attachment for all but safe rasters; no bearer token in a URL", async () => {
    const { mediaDir } = mediaDirs("serve");
    const g = await startGateway(freshPrefix("upsec-serve"), { CHAT_MEDIA_DIR: mediaDir });
    const alice = uniqueUser("alice");
    const token = await tokenFor(alice);
    const picture = png(2048);
    const up = await upload(g, token, picture, "image/png", "p.png");
    expect(up.status).toBe(200);
    const location = String(up.body.file_location);
    // A signed URL of our own media path; no token in it; it expires.
    expect(location).toMatch(new RegExp(`^/chat-media/${up.body.file_identifier.replace(".", "\\.")}\\?expires=\\d+&sig=[A-Za-z0-9_-]+$`));
    expect(location).not.toContain(token);
    expect(new Date(up.body.expiration_time).getTime()).toBeGreaterThan(Date.now());

    // The signed URL alone is enough (an <img> or a link opened in a new tab carries no header).
    const image = await get(g, location);
    expect(image.status).toBe(200);
    expect(image.bytes.equals(picture)).toBe(true);
    expect(image.headers.get("content-type")).toBe("image/png");
    expect(image.headers.get("x-content-type-options")).toBe("nosniff");
    expect(image.headers.get("content-security-policy")).toMatch(/sandbox/);
    expect(image.headers.get("content-security-policy")).toMatch(/default-src 'none'/);
    expect(image.headers.get("content-disposition")).toMatch(/^inline/);

    const doc = await upload(g, token, PDF, "application/pdf", "d.pdf");
    const served = await get(g, doc.body.file_location);
    expect(served.status).toBe(200);
    expect(served.headers.get("content-type")).toBe("application/pdf");
    expect(served.headers.get("content-disposition")).toMatch(/^attachment/);
    expect(served.headers.get("x-content-type-options")).toBe("nosniff");

    // A tampered or transplanted signature, or a bearer token in the query, serves nothing.
    const [path, query] = location.split("?") as [string, string];
    const params = new URLSearchParams(query);
    const sig = params.get("sig")!;
    const flipped = `${sig.slice(0, -2)}${sig.endsWith("AA") ? "BB" : "AA"}`;
    expect((await get(g, `${path}?expires=${params.get("expires")}&sig=${flipped}`)).status).toBe(403);
    expect((await get(g, `${path}?expires=${Number(params.get("expires")) + 1000}&sig=${sig}`)).status).toBe(403);
    const docSig = new URLSearchParams(String(doc.body.file_location).split("?")[1]).get("sig");
    expect((await get(g, `${path}?expires=${params.get("expires")}&sig=${docSig}`)).status).toBe(403);
    expect((await get(g, `${path}?token=${token}`)).status).toBe(401);
    // The uploader can still fetch with an Authorization header (API clients).
    expect((await get(g, path, { authorization: `Bearer ${token}` })).status).toBe(200);

    // A file stored before this fix as image/svg+xml is never served as such.
    const legacy = `${uuidv7()}.bin`;
    writeFileSync(join(mediaDir, legacy), SVG);
    await testSql()`INSERT INTO uploads (identifier, uploader, content_type, size_bytes, storage)
      VALUES (${legacy}, ${alice}, 'image/svg+xml', ${SVG.length}, 'local')`;
    const old = await get(g, `/chat-media/${legacy}`, { authorization: `Bearer ${token}` });
    expect(old.status).toBe(200);
    expect(old.headers.get("content-type")).toBe("application/octet-stream");
    expect(old.headers.get("content-disposition")).toMatch(/^attachment/);
    expect(old.headers.get("content-security-policy")).toMatch(/sandbox/);
  });
});

/** Opens `count` uploads on raw sockets, each sending its headers and the first part of the file. */
async function partialUploads(g: Gateway, token: string, count: number) {
  const boundary = "----abort-test";
  const head = `--${boundary}\r\nContent-Disposition: form-data; name="myFile"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n`;
  const declared = head.length + 4 * MiB;
  return Promise.all(
    Array.from({ length: count }, () => {
      const socket = netConnect(g.port, "127.0.0.1");
      socket.on("error", () => {});
      socket.write(
        `POST /api/rooms/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${token}\r\n` +
          `Content-Type: multipart/form-data; boundary=${boundary}\r\nContent-Length: ${declared}\r\n\r\n`,
      );
      socket.write(head);
      socket.write(png(256 * 1024));
      return socket;
    }),
  );
}

describe("an aborted upload releases everything", () => {
  it("gives back every file descriptor and deletes every partial file after clients disconnect mid-body", async () => {
    const { mediaDir } = mediaDirs("abort");
    const g = await startGateway(freshPrefix("upsec-abort"), { CHAT_MEDIA_DIR: mediaDir, CHAT_DB_POOL_SIZE: "2", CHAT_UPLOAD_QUOTA_BYTES_PER_HOUR: "0" });
    const alice = uniqueUser("alice");
    const token = await tokenFor(alice);
    // Warm up: the database pool and anything else opened lazily reach their steady size first.
    const warm = await Promise.all(Array.from({ length: 4 }, () => upload(g, token, png(1024), "image/png", "w.png")));
    expect(warm.map((r) => r.status)).toEqual([200, 200, 200, 200]);
    const kept = filesIn(mediaDir);
    await waitFor(() => expect(fdCount(g)).toBe(fdCount(g)));
    const baseline = fdCount(g);

    const N = 40;
    const sockets = await partialUploads(g, token, N);
    // Every upload is under way: its file exists on disk.
    await waitFor(() => expect(filesIn(mediaDir).length).toBe(kept.length + N), 15000);
    for (const s of sockets) s.destroy();

    await waitFor(() => {
      expect(filesIn(mediaDir)).toEqual(kept);
      expect(fdCount(g)).toBeLessThanOrEqual(baseline);
    }, 15000);
    expect((await get(g, "/healthz")).status).toBe(200);
    const [row] = await testSql()<{ n: number }[]>`SELECT count(*)::int AS n FROM uploads WHERE uploader = ${alice}`;
    expect(row!.n).toBe(4);
  });
});

describe("per-user upload quota and clean-up", () => {
  it("refuses uploads beyond the hourly budget with 429 across gateways and parallel uploads, and gives back what a refused upload did not use", async () => {
    const { mediaDir } = mediaDirs("quota");
    const prefix = freshPrefix("upsec-quota");
    const env = { CHAT_MEDIA_DIR: mediaDir, CHAT_UPLOAD_QUOTA_BYTES_PER_HOUR: String(5 * MiB + 4096) };
    const [g1, g2] = await Promise.all([startGateway(prefix, env), startGateway(prefix, env)]);
    const alice = uniqueUser("alice");
    const ta = await tokenFor(alice);

    const results = await Promise.all(Array.from({ length: 12 }, (_, i) => upload(i % 2 ? g1 : g2, ta, png(MiB), "image/png", `p${i}.png`)));
    const accepted = results.filter((r) => r.status === 200);
    const refused = results.filter((r) => r.status === 429);
    expect(accepted.length).toBe(5);
    expect(refused.length).toBe(7);
    for (const r of refused) expect(r.body).toMatchObject({ error: "upload_quota_exceeded" });
    expect(filesIn(mediaDir).length).toBe(5);
    const [row] = await testSql()<{ bytes: string }[]>`SELECT coalesce(sum(size_bytes), 0)::text AS bytes FROM uploads WHERE uploader = ${alice}`;
    expect(Number(row!.bytes)).toBe(5 * MiB);

    // Another user has a budget of their own; refused uploads (bad type) give their reservation back.
    const bob = uniqueUser("bob");
    const tb = await tokenFor(bob);
    for (const g of [g1, g2, g1]) {
      expect((await upload(g, tb, Buffer.concat([SVG, randomBytes(MiB)]), "image/png", "x.png")).status).toBe(415);
    }
    for (const g of [g1, g2, g1, g2, g1]) expect((await upload(g, tb, png(MiB), "image/png", "ok.png")).status).toBe(200);
    expect((await upload(g2, tb, png(MiB), "image/png", "over.png")).status).toBe(429);
  });

  it("deletes uploads no message references once past the grace period, and stray files, keeping referenced ones", async () => {
    const { mediaDir } = mediaDirs("sweep");
    const prefix = freshPrefix("upsec-sweep");
    const env = { CHAT_MEDIA_DIR: mediaDir, CHAT_UPLOAD_SWEEP_INTERVAL_SECONDS: "1", CHAT_UPLOAD_ORPHAN_GRACE_SECONDS: "3600" };
    const [g1, g2] = await Promise.all([startGateway(prefix, env), startGateway(prefix, env)]);
    await startWorker(prefix);
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const ta = await tokenFor(alice);
    const kept = await upload(g1, ta, png(), "image/png", "kept.png");
    const orphan = await upload(g2, ta, png(), "image/png", "orphan.png");
    const fresh = await upload(g2, ta, png(), "image/png", "fresh.png");
    const chat = await connectReady(g1.url, `/ws/${bob}/`, ta);
    chat.send({ type: "chat_message", message: "", client_id: "m1", multimedia_url: kept.body.file_location, file_identifier: kept.body.file_identifier });
    await waitFor(async () => expect((await messagesBetween(alice, bob)).length).toBe(1), 15000);

    // Files a crashed upload left behind: one old enough to go, one that may still be in progress.
    const strayOld = `${uuidv7()}.png`;
    const strayNew = `${uuidv7()}.png`;
    writeFileSync(join(mediaDir, strayOld), "partial");
    writeFileSync(join(mediaDir, strayNew), "partial");
    const twoHoursAgo = new Date(Date.now() - 2 * 3600 * 1000);
    utimesSync(join(mediaDir, strayOld), twoHoursAgo, twoHoursAgo);
    const sql = testSql();
    await sql`UPDATE uploads SET created_at = now() - interval '2 hours'
      WHERE identifier IN ${sql([kept.body.file_identifier, orphan.body.file_identifier])}`;

    await waitFor(async () => {
      expect(filesIn(mediaDir)).toEqual([kept.body.file_identifier, fresh.body.file_identifier, strayNew].sort());
      const rows = await sql<{ identifier: string }[]>`SELECT identifier FROM uploads WHERE uploader = ${alice} ORDER BY identifier`;
      expect(rows.map((r) => r.identifier)).toEqual([kept.body.file_identifier, fresh.body.file_identifier].sort());
    }, 15000);
    // One sweep deleted each: the lock lets one gateway at a time sweep.
    const deleted = [...g1.logs, ...g2.logs].filter((l) => l["msg"] === "media sweep deleted").reduce((n, l) => n + Number(l["uploads"] ?? 0), 0);
    expect(deleted).toBeGreaterThanOrEqual(1);
    for (const l of [...g1.logs, ...g2.logs]) expect(JSON.stringify(l)).not.toContain("sig=");
  });
});

describe("an oversize upload is answered, not reset", () => {
  it("answers 413 to a too-large declared Content-Length with Connection: close while the client is still sending, and the client reads it", async () => {
    const { mediaDir } = mediaDirs("oversize");
    const g = await startGateway(freshPrefix("upsec-413"), { CHAT_MEDIA_DIR: mediaDir, CHAT_UPLOAD_MAX_BYTES: String(MiB) });
    const token = await tokenFor(uniqueUser("alice"));
    const socket = netConnect(g.port, "127.0.0.1");
    let received = Buffer.alloc(0);
    let error: Error | null = null;
    let closed = false;
    socket.on("data", (d: Buffer) => (received = Buffer.concat([received, d])));
    socket.on("error", (err) => (error = err));
    socket.on("close", () => (closed = true));
    await new Promise<void>((resolve) => socket.once("connect", resolve));
    socket.write(
      `POST /api/rooms/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${token}\r\nConnection: close\r\n` +
        `Content-Type: multipart/form-data; boundary=x\r\nContent-Length: ${64 * MiB}\r\n\r\n`,
    );
    // The whole body handed to the kernel at once, as a client streaming a file does: the client only
    // reads once it is sent, or when the connection ends.
    socket.write(Buffer.alloc(64 * MiB, 1));
    await waitFor(() => expect(closed || received.includes('"file_too_large"')).toBe(true), 20000);
    const text = received.toString("latin1");
    expect(text.startsWith("HTTP/1.1 413 "), `read ${JSON.stringify(text.slice(0, 200))}, error ${String(error)}`).toBe(true);
    expect(text).toContain('"file_too_large"');
    socket.destroy();
    expect((await get(g, "/healthz")).status).toBe(200);
  });
});
