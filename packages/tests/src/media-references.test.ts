import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { redisNames } from "@chat/bus";
import { v7 as uuidv7 } from "uuid";
import { describe, expect, it, onTestFinished } from "vitest";
import { conversationStream, dropPrefixAtEnd, freshPrefix, startGateway, startWorker, testRedis, testSql, tokenFor, uniqueUser, waitFor } from "./helpers/index.js";

/** A real 1x1 PNG: the upload endpoint may look at the bytes, not only the declared type. */
const PNG = Buffer.from("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==", "base64");

// Register the pool's and the Redis connection's teardown at file level (first used inside a test).
testSql();
testRedis();

async function uploadPng(base: string, token: string): Promise<{ file_location: string; file_identifier: string }> {
  const form = new FormData();
  form.append("myFile", new Blob([PNG], { type: "image/png" }), "pixel.png");
  const res = await fetch(`${base}/api/rooms/upload`, { method: "POST", body: form, headers: { authorization: `Bearer ${token}` } });
  const body = (await res.json()) as { file_location: string; file_identifier: string };
  expect(res.status, JSON.stringify(body)).toBe(200);
  return body;
}

describe("refresh-url and stored media references", () => {
  it("never rewrites a stored message with a file its sender did not upload; refreshes the sender's own", async () => {
    const prefix = freshPrefix("mediaref");
    dropPrefixAtEnd(prefix);
    const mediaDir = mkdtempSync(join(tmpdir(), "chat-media-"));
    onTestFinished(() => rmSync(mediaDir, { recursive: true, force: true }));
    const g = await startGateway(prefix, { CHAT_MEDIA_DIR: mediaDir });
    await startWorker(prefix);
    const base = `http://127.0.0.1:${g.port}`;
    const [alice, bob, carol] = [uniqueUser("alice"), uniqueUser("bob"), uniqueUser("carol")];
    const [ta, tb, tc] = await Promise.all([tokenFor(alice), tokenFor(bob), tokenFor(carol)]);
    const carols = await uploadPng(base, tc);
    const mine = await uploadPng(base, ta);

    // Messages as a gateway before this check accepted them (straight into the conversation's partition of the log; the worker persists them).
    const entry = (multimedia_url: string, file_identifier: string) => ({
      kind: "message", id: uuidv7(), from: alice, to: bob, message: "", multimedia_url, file_identifier, date_added: new Date().toISOString(),
    });
    const foreign = entry("https://cdn.example/cat.png", carols.file_identifier);
    const own = entry("https://cdn.example/stale.png", mine.file_identifier);
    const names = redisNames(prefix);
    for (const e of [foreign, own]) await testRedis().xadd(conversationStream(names, alice, bob), "*", "e", JSON.stringify(e));
    const urlOf = async (id: string) =>
      (await testSql()<{ multimedia_url: string | null }[]>`SELECT multimedia_url FROM messages WHERE id = ${id}`)[0]?.multimedia_url;
    await waitFor(async () => {
      expect(await urlOf(foreign.id)).toBe(foreign.multimedia_url);
      expect(await urlOf(own.id)).toBe(own.multimedia_url);
    }, 15000);

    const get = async (path: string, token: string) => {
      const res = await fetch(`${base}${path}`, { headers: { authorization: `Bearer ${token}` } });
      return { status: res.status, body: (await res.json()) as Record<string, unknown> };
    };
    // The recipient (and the sender) asking to refresh the message with carol's file: refused, row untouched.
    for (const token of [tb, ta]) {
      const r = await get(`/api/rooms/refresh-url/?message_id=${foreign.id}`, token);
      expect(r.status).toBe(404);
      expect(r.body).toEqual({ error: "no_media", message: expect.any(String) });
    }
    expect(await urlOf(foreign.id)).toBe(foreign.multimedia_url);
    // Carol's file stays unreadable to bob.
    expect((await fetch(`${base}/chat-media/${carols.file_identifier}`, { headers: { authorization: `Bearer ${tb}` } })).status).toBe(404);

    // The sender's own upload is refreshed to its location.
    const r = await get(`/api/rooms/refresh-url/?message_id=${own.id}`, tb);
    expect(r.status).toBe(200);
    expect(new URL(String(r.body["file_location"]), base).pathname).toBe(new URL(mine.file_location, base).pathname);
    expect(await urlOf(own.id)).toBe(r.body["file_location"]);
  });
});
