import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { BrowserContext, Page } from "playwright-core";
import { v7 as uuidv7 } from "uuid";
import { describe, expect, it, onTestFinished } from "vitest";
import { connectReady, dropPrefixAtEnd, freshPrefix, messagesBetween, startGateway, startWorker, testSql, uniqueUser, waitFor } from "./helpers/index.js";
import { CHROMIUM_MISSING, CHROMIUM_PATH, POLL, byTestId, openBrowser } from "./helpers/browser.js";

// Issue 13.1 in a real browser: an SVG with a script, uploaded by one user, never runs in the app's
// origin, whatever way it comes back; and no URL the client renders or loads carries the bearer token.


/** The script's side effects, were it ever to run in the app's origin. */
const SVG = Buffer.from(
  `<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10" onload="localStorage.setItem('xss', location.href); document.title = 'pwned'">` +
    `<script>localStorage.setItem('xss', 'script'); document.title = 'pwned'</script><rect width="10" height="10"/></svg>`,
);
/** A 1x1 PNG. */
const PNG = Buffer.from("89504e470d0a1a0a0000000d4948445200000001000000010806000000" + "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201a5f5e3f40000000049454e44ae426082", "hex");

/** Opens `url` in a new tab of the signed-in browser, as a click on a link would; a download is fine. */
async function openInTab(context: BrowserContext, url: string): Promise<Page> {
  const tab = await context.newPage();
  try {
    await tab.goto(url, { waitUntil: "load" });
  } catch (err) {
    // An attachment starts a download instead of a document: nothing renders, nothing runs.
    if (!String(err).includes("Download is starting")) throw err;
  }
  return tab;
}

describe.skipIf(CHROMIUM_MISSING)(`browser: uploaded media${CHROMIUM_MISSING ? ` (skipped: no browser at ${CHROMIUM_PATH})` : ""}`, () => {
  it("never runs an uploaded SVG's script in the app's origin, and renders no URL with the bearer token", async () => {
    const prefix = freshPrefix("browser-media");
    dropPrefixAtEnd(prefix);
    const mediaDir = mkdtempSync(join(tmpdir(), "chat-browser-media-"));
    onTestFinished(() => rmSync(mediaDir, { recursive: true, force: true }));
    // Development sign-in works with the built-in development secret only.
    const g = await startGateway(prefix, { NODE_ENV: "development", CHAT_JWT_SECRET: undefined, CHAT_MEDIA_DIR: mediaDir });
    await startWorker(prefix);
    const origin = `http://127.0.0.1:${g.port}`;
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");

    const a = await openBrowser(`${origin}/`);
    const requested: string[] = [];
    a.context.on("request", (r) => requested.push(r.url()));
    await byTestId(a.page, "signin-username").fill(alice);
    await byTestId(a.page, "signin-submit").click();
    await expect.poll(() => byTestId(a.page, "current-user").textContent(), POLL).toBe(alice);
    const token = (await a.page.evaluate(() => sessionStorage.getItem("chat.token")))!;
    expect(token).toBeTruthy();
    await byTestId(a.page, "new-conversation-input").fill(bob);
    await byTestId(a.page, "new-conversation-submit").click();
    await expect.poll(() => byTestId(a.page, "connection-status").getAttribute("data-state"), POLL).toBe("open");

    // 1. A picture, so that the client renders a media link and an image of its own.
    await byTestId(a.page, "attach-input").setInputFiles({ name: "dot.png", mimeType: "image/png", buffer: PNG });
    await byTestId(a.page, "message-input").fill("a dot");
    await byTestId(a.page, "send-button").click();
    const image = a.page.locator(`[data-testid="message"][data-id] [data-testid="message-image"]`);
    await expect.poll(() => image.evaluate((img: HTMLImageElement) => img.complete && img.naturalWidth), POLL).toBe(1);

    // 2. The SVG through the client's own attach button, as an SVG and under a raster name.
    for (const [name, mimeType] of [["cat.svg", "image/svg+xml"], ["cat.png", "image/png"]] as const) {
      await byTestId(a.page, "attach-input").setInputFiles({ name, mimeType, buffer: SVG });
      await expect.poll(() => byTestId(a.page, "attachment-error").textContent(), POLL).toBe("");
      await byTestId(a.page, "message-input").fill(name);
      await byTestId(a.page, "send-button").click();
      // Either refused (shown as an upload error) or sent (shown with its link): wait for one of them.
      await expect
        .poll(async () => {
          const refusal = (await byTestId(a.page, "attachment-error").textContent()) ?? "";
          const texts = await a.page.locator(`[data-testid="message"][data-id] [data-testid="message-text"]`).allTextContents();
          return refusal.includes("cannot be sent") || texts.includes(name);
        }, POLL)
        .toBe(true);
    }

    // 3. A file with SVG bytes that got stored as such before uploads were sniffed, sent in a message:
    //    whatever URL the API hands out for it is opened too.
    const legacy = `${uuidv7()}.bin`;
    writeFileSync(join(mediaDir, legacy), SVG);
    await testSql()`INSERT INTO uploads (identifier, uploader, content_type, size_bytes, storage)
      VALUES (${legacy}, ${alice}, 'image/svg+xml', ${SVG.length}, 'local')`;
    const chat = await connectReady(g.url, `/ws/${bob}/`, token);
    chat.send({ type: "chat_message", message: "legacy", client_id: "legacy", multimedia_url: `/chat-media/${legacy}`, file_identifier: legacy });
    await waitFor(async () => expect((await messagesBetween(alice, bob)).some((m) => m.content === "legacy")).toBe(true), 15000);
    const legacyMessage = (await messagesBetween(alice, bob)).find((m) => m.content === "legacy")!;
    const refreshed = await a.page.evaluate(async (id) => {
      const res = await fetch(`/api/rooms/refresh-url/?message_id=${id}`, { headers: { authorization: `Bearer ${sessionStorage.getItem("chat.token")}` } });
      return ((await res.json()) as { file_location?: string }).file_location ?? null;
    }, legacyMessage.id);

    // Every media URL the page shows, and the legacy one, opened in a tab of the signed-in browser.
    const links = await a.page.evaluate(() =>
      [...document.querySelectorAll("a[href], img[src], [src], [href]")].map((e) => (e as HTMLAnchorElement).href || (e as HTMLImageElement).src),
    );
    const media = [...new Set([...links.filter((l) => l.includes("/chat-media/")), ...(refreshed ? [new URL(refreshed, origin).href] : [])])];
    expect(media.length).toBeGreaterThanOrEqual(1);
    const tabs: Page[] = [];
    for (const url of media) tabs.push(await openInTab(a.context, url));

    // The script never ran in the app's origin: no storage written there, no title changed.
    expect(await a.page.evaluate(() => localStorage.getItem("xss"))).toBeNull();
    for (const tab of [a.page, ...tabs]) expect(await tab.title()).not.toBe("pwned");
    const check = await openInTab(a.context, `${origin}/`);
    expect(await check.evaluate(() => localStorage.getItem("xss"))).toBeNull();

    // No page URL, link or loaded resource (other than the sockets' upgrade, which no user opens or shares) carries the token.
    expect(a.page.url()).not.toContain(token);
    for (const l of links) expect(l, "a link or source in the page").not.toContain(token);
    for (const u of requested.filter((r) => !r.startsWith("ws"))) expect(u, "a URL the browser loaded").not.toContain(token);
    expect(a.pageErrors).toEqual([]);
  });
});
