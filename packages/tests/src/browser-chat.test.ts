import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { decodeJwt } from "jose";
import type { Page } from "playwright-core";
import { describe, expect, it, onTestFinished } from "vitest";
import { DEVELOPMENT_JWT_SECRET, connectReady, dropPrefixAtEnd, freshPrefix, REPO_ROOT, startGateway, startWorker, tokenFor, uniqueUser, type Gateway } from "./helpers/index.js";
import { CHROMIUM_MISSING, CHROMIUM_PATH, POLL, byTestId, openBrowser, savePng, sendFromPage as send, shownTexts, sideBySide, signIn } from "./helpers/browser.js";

// The browser client of apps/gateway/public, driven in two real Chromium sessions (alice and bob)
// on two gateway nodes, with a worker persisting. Every wait polls (locators, expect.poll).

// The README's pictures are refreshed only when asked: a plain test run writes its screenshots where git
// does not look, so `npm test` leaves the working tree as it found it.
const SCREENSHOTS = join(REPO_ROOT, process.env["UPDATE_SCREENSHOTS"] === "1" ? "docs/screenshots" : "test-results/screenshots");
/** More than one history page of the client (25), so that scrolling back has something to load. */
const EARLIER = 40;


function pageUrl(g: Gateway): string {
  return `http://127.0.0.1:${g.port}/`;
}


function conversationItem(page: Page, other: string) {
  return page.locator(`[data-testid="conversation-item"][data-username="${other}"]`);
}


/** The text of each message that shows "Seen" (read receipts), top to bottom. */
function seenUnder(page: Page): Promise<(string | null)[]> {
  return page
    .locator(`[data-testid="seen-mark"]`)
    .evaluateAll((marks) => marks.map((m) => m.closest(`[data-testid="message"]`)?.querySelector(`[data-testid="message-text"]`)?.textContent ?? null));
}


async function presence(page: Page): Promise<string | null> {
  return byTestId(page, "presence").getAttribute("data-state");
}

describe.skipIf(CHROMIUM_MISSING)(`browser client${CHROMIUM_MISSING ? ` (skipped: no browser at ${CHROMIUM_PATH}; apt-get install -y chromium)` : ""}`, () => {
  it(
    "two users on two nodes: sign-in, unread badge, history with scroll-back, presence, live messages both ways, typing, attachments",
    async () => {
      const prefix = freshPrefix("browser");
      dropPrefixAtEnd(prefix);
      const mediaDir = mkdtempSync(join(tmpdir(), "chat-browser-media-"));
      onTestFinished(() => rmSync(mediaDir, { recursive: true, force: true }));
      // One media directory for both nodes, as a shared volume would be: bob's node serves alice's upload.
      const env = { NODE_ENV: "development", CHAT_JWT_SECRET: "", CHAT_MEDIA_DIR: mediaDir };
      const [g1, g2] = await Promise.all([startGateway(prefix, env), startGateway(prefix, env)]);
      await startWorker(prefix);
      const alice = uniqueUser("alice");
      const bob = uniqueUser("bob");

      // Sign-in: a development token from the page's own node, kept in sessionStorage.
      const [a, b] = await Promise.all([openBrowser(pageUrl(g1)), openBrowser(pageUrl(g2))]);
      await byTestId(a.page, "signin").waitFor();
      savePng(join(SCREENSHOTS, "sign-in.png"), await a.page.screenshot());
      await signIn(a.page, alice);
      await signIn(b.page, bob);
      const stored = await a.page.evaluate(() => sessionStorage.getItem("chat.token"));
      expect(decodeJwt(stored ?? "").sub).toBe(alice);

      // Earlier messages (more than one page), sent over a plain chat socket before bob opens anything.
      const earlier = Array.from({ length: EARLIER }, (_, i) => `earlier ${String(i + 1).padStart(2, "0")}`);
      const script = await connectReady(g1.url, `/ws/${bob}/`, await tokenFor(alice, { secret: DEVELOPMENT_JWT_SECRET }));
      for (const [i, text] of earlier.entries()) script.send({ type: "chat_message", message: text, client_id: `e-${i}` });
      await script.until((frames) => frames.filter((f) => f.type === "chat_message").length === EARLIER, 10_000, "echoes");
      expect(script.ofType("error")).toEqual([]);
      // Closed so that only the browser decides whether alice is online.
      await script.close();

      // Alice starts the conversation from the field and writes from the page.
      await byTestId(a.page, "new-conversation-input").fill(bob);
      await byTestId(a.page, "new-conversation-submit").click();
      await expect.poll(() => byTestId(a.page, "conversation-title").textContent(), POLL).toBe(bob);
      await send(a.page, "hello bob, from the browser");
      await expect.poll(async () => (await shownTexts(a.page)).at(-1), POLL).toBe("hello bob, from the browser");

      // Bob's list shows the conversation with its unread badge, live from his notifications socket.
      const all = [...earlier, "hello bob, from the browser"];
      const bobsItem = conversationItem(b.page, alice);
      await expect.poll(() => bobsItem.locator(`[data-testid="unread-badge"]`).textContent(), POLL).toBe(String(all.length));
      expect(await bobsItem.locator(`[data-testid="unread-badge"]`).isVisible()).toBe(true);
      expect(await bobsItem.locator(`[data-testid="last-message"]`).textContent()).toContain("hello bob, from the browser");
      expect(await byTestId(b.page, "unread-total").textContent()).toBe(String(all.length));
      savePng(join(SCREENSHOTS, "conversation-list-unread.png"), await b.page.screenshot());

      // Bob opens it: alice is in this chat (her page has it open), the newest page is shown in order.
      await bobsItem.click();
      await expect.poll(() => presence(b.page), POLL).toBe("here");
      await expect.poll(async () => (await shownTexts(b.page)).at(-1), POLL).toBe(all.at(-1));
      const firstPage = await shownTexts(b.page);
      expect(firstPage.length).toBeLessThan(all.length);
      expect(firstPage).toEqual(all.slice(all.length - firstPage.length));
      expect(await byTestId(b.page, "load-older").isVisible()).toBe(true);

      // Scrolling back to the top loads the older pages, oldest first, up to the first message.
      const scroller = byTestId(b.page, "message-scroller");
      await expect
        .poll(async () => {
          await scroller.evaluate((node) => node.scrollTo(0, 0));
          return (await shownTexts(b.page)).length;
        }, POLL)
        .toBe(all.length);
      expect(await shownTexts(b.page)).toEqual(all);
      await byTestId(b.page, "history-start").waitFor();

      // Opening marked the conversation read: the badge and the total clear.
      await expect.poll(() => bobsItem.locator(`[data-testid="unread-badge"]`).isHidden(), POLL).toBe(true);
      await expect.poll(() => byTestId(b.page, "unread-total").isHidden(), POLL).toBe(true);

      // Live, both ways, across the two nodes.
      await send(b.page, "hi alice, bob here");
      await expect.poll(async () => (await shownTexts(a.page)).at(-1), POLL).toBe("hi alice, bob here");
      await send(a.page, "nice to see you live");
      // Each page shows the message when its own node delivers it; alice's echo may come after bob's copy.
      await expect.poll(async () => (await shownTexts(b.page)).at(-1), POLL).toBe("nice to see you live");
      await expect.poll(async () => (await shownTexts(a.page)).at(-1), POLL).toBe("nice to see you live");

      expect((await shownTexts(a.page)).slice(-3)).toEqual(["hello bob, from the browser", "hi alice, bob here", "nice to see you live"]);
      expect((await shownTexts(b.page)).slice(-3)).toEqual(["hello bob, from the browser", "hi alice, bob here", "nice to see you live"]);

      // Typing: alice sees bob typing while he types (never bob himself), and not once his message is in.
      await byTestId(b.page, "message-input").fill("a reply in the works");
      await expect.poll(() => byTestId(a.page, "typing-indicator").textContent(), POLL).toBe(`${bob} is typing…`);
      expect(await byTestId(a.page, "typing-indicator").isVisible()).toBe(true);
      expect(await byTestId(b.page, "typing-indicator").isHidden()).toBe(true);
      await byTestId(b.page, "send-button").click();
      await expect.poll(async () => (await shownTexts(a.page)).at(-1), POLL).toBe("a reply in the works");
      expect(await byTestId(a.page, "typing-indicator").isHidden()).toBe(true);

      // An attachment: uploaded to alice's node, sent with the returned fields, shown by bob's node.
      // The picture: a 160x90 crop of alice's own screen.
      const picture = await a.page.screenshot({ clip: { x: 0, y: 0, width: 160, height: 90 } });
      await byTestId(a.page, "attach-input").setInputFiles({ name: "screen.png", mimeType: "image/png", buffer: picture });
      await send(a.page, "a picture");
      const image = b.page.locator(`[data-testid="message"][data-from="${alice}"] [data-testid="message-image"]`);
      await expect.poll(() => image.evaluate((img: HTMLImageElement) => img.complete && img.naturalWidth), POLL).toBe(160);
      expect((await shownTexts(b.page)).at(-1)).toBe("a picture");

      // Seen: each side has the conversation open, so each read the other's messages; each page marks
      // its user's newest message the other read, and only that one.
      await expect.poll(() => seenUnder(a.page), POLL).toEqual(["a picture"]);
      await expect.poll(() => seenUnder(b.page), POLL).toEqual(["a reply in the works"]);

      // Messages bob reads while the conversation is open leave no badge behind.
      await expect.poll(() => bobsItem.locator(`[data-testid="unread-badge"]`).isHidden(), POLL).toBe(true);

      for (const { page } of [a, b]) await byTestId(page, "message-scroller").evaluate((node) => node.scrollTo(0, node.scrollHeight));
      const [alicePng, bobPng] = await Promise.all([a.page.screenshot(), b.page.screenshot()]);
      savePng(
        join(SCREENSHOTS, "two-users-chatting.png"),
        await sideBySide(a.context, [
          { label: `alice (node 1, :${g1.port})`, png: alicePng },
          { label: `bob (node 2, :${g2.port})`, png: bobPng },
        ]),
      );

      // In the list, each sees the other online: a dot, from the conversations page and presence events.
      await expect.poll(() => bobsItem.getAttribute("data-online"), POLL).toBe("true");
      expect(await bobsItem.locator(`[data-testid="online-dot"]`).isVisible()).toBe(true);
      await expect.poll(() => conversationItem(a.page, bob).getAttribute("data-online"), POLL).toBe("true");

      // Presence follows alice's page: closing the conversation, reopening it, navigating away.
      await byTestId(a.page, "close-conversation").click();
      // Out of the conversation but still signed in: online, in bob's header and list.
      await expect.poll(() => presence(b.page), POLL).toBe("online");
      expect(await byTestId(b.page, "presence").textContent()).toBe("online");
      expect(await bobsItem.getAttribute("data-online")).toBe("true");
      await conversationItem(a.page, bob).click();
      await expect.poll(() => presence(b.page), POLL).toBe("here");
      expect(await byTestId(b.page, "presence").textContent()).toBe("in this chat");
      // A reopened conversation shows its history again, "Seen" included.
      await expect.poll(async () => (await shownTexts(a.page)).at(-1), POLL).toBe("a picture");
      await expect.poll(() => seenUnder(a.page), POLL).toEqual(["a picture"]);
      await a.page.goto("about:blank");
      await expect.poll(() => presence(b.page), POLL).toBe("offline");
      // Her last socket closed: offline in bob's list too.
      await expect.poll(() => bobsItem.getAttribute("data-online"), POLL).toBe("false");
      expect(await bobsItem.locator(`[data-testid="online-dot"]`).isHidden()).toBe(true);

      expect(a.pageErrors).toEqual([]);
      expect(b.pageErrors).toEqual([]);
    },
    180_000,
  );

  it("keeps the session across a reload and catches up on a dropped chat socket with ?since=", async () => {
    const prefix = freshPrefix("browser-since");
    dropPrefixAtEnd(prefix);
    const env = { NODE_ENV: "development", CHAT_JWT_SECRET: "" };
    const [g1, g2] = await Promise.all([startGateway(prefix, env), startGateway(prefix, env)]);
    await startWorker(prefix);
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const a = await openBrowser(pageUrl(g1));
    // Keeps a handle on the page's sockets, so the test can drop them as a failing network would.
    await a.context.addInitScript(() => {
      const Native = window.WebSocket;
      const sockets: WebSocket[] = [];
      window.WebSocket = class extends Native {
        constructor(url: string | URL, protocols?: string | string[]) {
          super(url, protocols);
          sockets.push(this);
        }
      };
      const w = window as unknown as { dropSockets: () => void; socketUrls: () => string[] };
      w.dropSockets = () => sockets.forEach((ws) => ws.close(4000, "test: network dropped"));
      w.socketUrls = () => sockets.map((ws) => ws.url);
    });
    await a.page.reload();
    await signIn(a.page, alice);
    await byTestId(a.page, "new-conversation-input").fill(bob);
    await byTestId(a.page, "new-conversation-submit").click();
    await expect.poll(() => byTestId(a.page, "connection-status").getAttribute("data-state"), POLL).toBe("open");

    // The token survives a reload (sessionStorage), and so does the open conversation (#/bob).
    await a.page.reload();
    await expect.poll(() => byTestId(a.page, "current-user").textContent(), POLL).toBe(alice);
    await expect.poll(() => byTestId(a.page, "connection-status").getAttribute("data-state"), POLL).toBe("open");
    const bobSocket = await connectReady(g2.url, `/ws/${alice}/`, await tokenFor(bob, { secret: DEVELOPMENT_JWT_SECRET }));
    bobSocket.send({ type: "chat_message", message: "before the drop", client_id: "b-1" });
    await expect.poll(async () => (await shownTexts(a.page)).at(-1), POLL).toBe("before the drop");

    // Alice's network goes away and her sockets drop; bob writes meanwhile; the network comes back,
    // the page reconnects with ?since= and the replay brings exactly what it missed.
    await a.context.setOffline(true);
    await a.page.evaluate(() => (window as unknown as { dropSockets: () => void }).dropSockets());
    await expect.poll(() => byTestId(a.page, "connection-status").getAttribute("data-state"), POLL).not.toBe("open");
    for (let i = 1; i <= 3; i++) bobSocket.send({ type: "chat_message", message: `while away ${i}`, client_id: `b-away-${i}` });
    await bobSocket.until((frames) => frames.filter((f) => f.type === "chat_message").length === 4, 10_000, "echoes");
    expect(await shownTexts(a.page)).toEqual(["before the drop"]);
    await a.context.setOffline(false);
    await expect.poll(() => shownTexts(a.page), { ...POLL, timeout: 30_000 }).toEqual(["before the drop", "while away 1", "while away 2", "while away 3"]);
    const before = bobSocket.ofType("chat_message")[0]!;
    const chatUrls = (await a.page.evaluate(() => (window as unknown as { socketUrls: () => string[] }).socketUrls())).filter((u) => u.includes(`/ws/${bob}/`));
    expect(new URL(chatUrls.at(-1)!).searchParams.get("since")).toBe(before["id"]);
    expect(a.pageErrors).toEqual([]);
  }, 120_000);
});
