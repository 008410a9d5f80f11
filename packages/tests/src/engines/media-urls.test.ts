import { ErrorCode } from "@chat/protocol";
import { describe, expect, it } from "vitest";
import { connectReady, engines, sharedEngine, tokenFor, uniqueUser, waitFor, type Frame, type TestClient } from "../helpers/index.js";
import { asHistoryMessage, chatMessages, chatPath, history, noSchemaViolations, say, uploadPng, type Json } from "./support.js";

/** Sends a chat_message and resolves to the error frame that refuses it (failing on an echo instead). */
async function refused(chat: TestClient, frame: Record<string, unknown>): Promise<Frame> {
  chat.send({ type: "chat_message", ...frame });
  for (;;) {
    const f = await chat.next(undefined, 10000);
    if (f.type === "chat_message" && f["client_id"] === frame["client_id"]) throw new Error(`accepted: ${JSON.stringify(frame)}`);
    if (f.type === "error" && f["client_id"] === frame["client_id"]) return f;
  }
}

describe.each(engines)("media URLs of chat messages (%s engine)", (kind) => {
  const shared = sharedEngine(kind);
  it("accepts only http(s) URLs to public hosts and the gateway's own media paths; refuses the rest with invalid_media_url and stores nothing", async () => {
    const engine = shared();
    const [alice, bob] = [uniqueUser("alice"), uniqueUser("bob")];
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);
    const a = await connectReady(engine.nodes[0], chatPath(bob), ta);
    const b = await connectReady(engine.nodes[1], chatPath(alice), tb);
    const bad = [
      "javascript:alert(document.cookie)",
      "JavaScript:alert(1)",
      " javascript:alert(1)",
      "data:text/html,<script>alert(1)</script>",
      "data:image/png;base64,iVBORw0KGgo=",
      "file:///etc/passwd",
      "ftp://files.example/x.png",
      "vbscript:msgbox(1)",
      "blob:https://cdn.example/0b1c",
      "//evil.example/x.png",
      "http://169.254.169.254/latest/meta-data/",
      "http://127.0.0.1:8000/api/conversations",
      "http://2130706433/",
      "http://0x7f.1/",
      "http://localhost/x",
      "http://app.localhost/x",
      "http://10.1.2.3/x",
      "http://172.16.5.4/x",
      "http://192.168.0.1/x",
      "http://100.64.0.1/x",
      "http://0.0.0.0/x",
      "http://[::1]/x",
      "http://[fe80::1]/x",
      "http://[fd00::1]/x",
      "http://[::ffff:127.0.0.1]/x",
      "https://user:secret@cdn.example/x.png",
      "https:cdn.example",
      "/api/conversations",
      "/chat-media/../api/conversations",
      "/chat-media/not-an-identifier",
      "chat-media/x",
    ];
    for (const [i, url] of bad.entries()) {
      const err = await refused(a, { message: "", multimedia_url: url, client_id: `bad-${i}` });
      expect(err, url).toEqual({ type: "error", code: ErrorCode.invalid_media_url, message: expect.any(String), client_id: `bad-${i}` });
    }
    const good = [await say(a, "", { multimedia_url: "https://cdn.example/x.png", client_id: "good-1" }), await say(a, "", { multimedia_url: "http://cdn.example:8080/y.png?v=2#top", client_id: "good-2" })];
    await b.until((f) => f.some((x) => x["client_id"] === "good-2"), 5000, "good-2 at bob");
    expect(chatMessages(b)).toEqual(good);
    await waitFor(async () => expect(await history(engine.http[1], alice, tb)).toEqual(good.map(asHistoryMessage).reverse()), 10000);
    noSchemaViolations(a, b);
  });

  it("lets a message reference only the sender's own upload, at that upload's own location", async () => {
    const engine = shared();
    const [alice, bob, carol] = [uniqueUser("alice"), uniqueUser("bob"), uniqueUser("carol")];
    const [ta, tb, tc] = await Promise.all([tokenFor(alice), tokenFor(bob), tokenFor(carol)]);
    const mine = await uploadPng(engine.http[0], ta);
    const carols = await uploadPng(engine.http[1], tc);
    const a = await connectReady(engine.nodes[0], chatPath(bob), ta);
    const b = await connectReady(engine.nodes[1], chatPath(alice), tb);
    const unknownId = mine.file_identifier.replace(/^.{8}/, "00000000");

    const refusals: [string, Record<string, unknown>][] = [
      // Issue 13 point 10: an external URL with someone else's file_identifier.
      ["external URL, carol's file", { multimedia_url: "https://cdn.example/x.png", file_identifier: carols.file_identifier }],
      ["carol's file at its own location", { multimedia_url: carols.file_location, file_identifier: carols.file_identifier }],
      ["carol's media path, no identifier", { multimedia_url: carols.file_location }],
      ["own file, external URL", { multimedia_url: "https://cdn.example/x.png", file_identifier: mine.file_identifier }],
      ["own file, carol's location", { multimedia_url: carols.file_location, file_identifier: mine.file_identifier }],
      ["own location, carol's file", { multimedia_url: mine.file_location, file_identifier: carols.file_identifier }],
      ["a file nobody uploaded", { multimedia_url: `/chat-media/${unknownId}`, file_identifier: unknownId }],
      ["not an identifier", { multimedia_url: mine.file_location, file_identifier: "../../etc/passwd" }],
      ["an identifier without a URL", { message: "hi", file_identifier: mine.file_identifier }],
    ];
    for (const [i, [what, frame]] of refusals.entries()) {
      const err = await refused(a, { message: "", ...frame, client_id: `ref-${i}` });
      expect(err, what).toEqual({ type: "error", code: ErrorCode.invalid_media_url, message: expect.any(String), client_id: `ref-${i}` });
    }
    // Her own upload at its location, also with a query string (signed local URLs carry one).
    const ok1 = await say(a, "", { multimedia_url: mine.file_location, file_identifier: mine.file_identifier, client_id: "own-1" });
    const signed = `/chat-media/${mine.file_identifier}?expires=4102444800&sig=abc`;
    const ok2 = await say(a, "", { multimedia_url: signed, file_identifier: mine.file_identifier, client_id: "own-2" });
    // A text sent right after a checked one is not overtaken by it.
    a.send({ type: "chat_message", message: "", multimedia_url: mine.file_location, file_identifier: mine.file_identifier, client_id: "own-3" });
    a.send({ type: "chat_message", message: "after", client_id: "own-4" });
    await b.until((f) => f.some((x) => x["client_id"] === "own-4"), 5000, "own-4 at bob");
    expect(chatMessages(b).map((f) => f["client_id"])).toEqual(["own-1", "own-2", "own-3", "own-4"]);
    expect(chatMessages(b).slice(0, 2)).toEqual([ok1, ok2]);
    await waitFor(async () => expect(await history(engine.http[0], bob, ta)).toHaveLength(4), 10000);
    // Bob may read the file now; carol's file stays hers.
    expect((await fetch(`${engine.http[1]}/chat-media/${mine.file_identifier}`, { headers: { authorization: `Bearer ${tb}` } })).status).toBe(200);
    expect((await fetch(`${engine.http[1]}/chat-media/${carols.file_identifier}`, { headers: { authorization: `Bearer ${tb}` } })).status).toBe(404);
    noSchemaViolations(a, b);
  });
});
