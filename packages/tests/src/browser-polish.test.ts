import { createServer, connect, type AddressInfo, type Server, type Socket } from "node:net";
import { join } from "node:path";
import type { Page } from "playwright-core";
import { describe, expect, it, onTestFinished } from "vitest";
import { connectReady, dropPrefixAtEnd, freshPrefix, REPO_ROOT, startGateway, startWorker, uniqueUser, type Gateway } from "./helpers/index.js";
import { byTestId, CHROMIUM_MISSING, CHROMIUM_PATH, openBrowser, POLL, savePng, shownTexts, signIn } from "./helpers/browser.js";

// The rough edges a new user found in the browser client (apps/gateway/public), each driven in a real
// Chromium against real gateway processes: deep links through sign-in, the favicon, the length counter,
// a refused attachment, failed messages, the offline banner, unread counts in the title, the phone
// layout. Every wait polls (locators, expect.poll).

const SCREENSHOTS = join(REPO_ROOT, process.env["UPDATE_SCREENSHOTS"] === "1" ? "docs/screenshots" : "test-results/screenshots");
const PHONE = { width: 390, height: 740 };

const pageUrl = (g: Gateway) => `http://127.0.0.1:${g.port}/`;

/**
 * Development gateways: the built-in development secret (no CHAT_JWT_SECRET), which is what lets
 * them issue tokens at POST /api/dev/token, where the scripted users get theirs too.
 */
const DEV = { NODE_ENV: "development", CHAT_JWT_SECRET: undefined };

async function devToken(g: Gateway, username: string): Promise<string> {
  const res = await fetch(`${pageUrl(g)}api/dev/token`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ username }) });
  expect(res.status).toBe(200);
  return ((await res.json()) as { token: string }).token;
}
/** Digits only: the client formats numbers in the browser's locale (4,096 or 4.096). */
const digits = (s: string | null) => (s ?? "").replace(/\D/g, "");

/**
 * A TCP relay in front of a gateway, for the browser: `cut()` drops every connection and refuses new
 * ones, as a server gone away would; `restore()` listens again on the same port. (A gateway restarted
 * on its old port may find it still held by the connections it closed.)
 */
async function relay(target: Gateway) {
  const open = new Set<Socket>();
  let server: Server;
  const listen = (port: number) =>
    new Promise<number>((resolve, reject) => {
      server = createServer((client) => {
        const upstream = connect(target.port, "127.0.0.1");
        const drop = () => {
          for (const s of [client, upstream]) {
            s.destroy();
            open.delete(s);
          }
        };
        for (const s of [client, upstream]) {
          open.add(s);
          s.on("error", drop).on("close", drop);
        }
        client.pipe(upstream).pipe(client);
      });
      server.once("error", reject);
      server.listen(port, "127.0.0.1", () => resolve((server.address() as AddressInfo).port));
    });
  const port = await listen(0);
  const cut = () =>
    new Promise<void>((resolve) => {
      server.close(() => resolve());
      for (const s of open) s.destroy();
    });
  onTestFinished(() => (server.listening ? cut() : undefined));
  return { url: `http://127.0.0.1:${port}/`, cut, restore: () => listen(port) };
}



/** Whether an element's own text is wider than its box (cut off or ellipsed). */
function textCut(page: Page, testid: string): Promise<boolean> {
  return byTestId(page, testid).evaluate((node: HTMLElement) => node.scrollWidth > node.clientWidth);
}

/** Whether an input's placeholder is wider than the room it has (a placeholder does not scroll, so it is measured). */
function placeholderCut(page: Page, testid: string): Promise<boolean> {
  return byTestId(page, testid).evaluate((input: HTMLInputElement) => {
    const style = getComputedStyle(input);
    const ctx = document.createElement("canvas").getContext("2d")!;
    ctx.font = `${style.fontWeight} ${style.fontSize} ${style.fontFamily}`;
    const room = input.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    return ctx.measureText(input.placeholder).width > room;
  });
}

describe.skipIf(CHROMIUM_MISSING)(`browser client polish${CHROMIUM_MISSING ? ` (skipped: no browser at ${CHROMIUM_PATH}; apt-get install -y chromium)` : ""}`, () => {
  it("deep link through sign-in, favicon, length counter, refused attachment, unread title, offline banner, phone empty state", async () => {
    const prefix = freshPrefix("browser-polish");
    dropPrefixAtEnd(prefix);
    const env = DEV;
    const g = await startGateway(prefix, env);
    // Alice's page goes through a relay, so that the test can take the server away from her.
    const line = await relay(g);
    await startWorker(prefix);
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const carol = uniqueUser("carol");

    // A link to a conversation, opened before signing in: the sign-in says where it leads, and the
    // conversation opens once signed in.
    const a = await openBrowser(`${line.url}#/${bob}`);
    await expect.poll(() => byTestId(a.page, "signin-deep-link").textContent(), POLL).toContain(bob);
    savePng(join(SCREENSHOTS, "polish-sign-in-deep-link.png"), await a.page.screenshot());
    await signIn(a.page, alice);
    await expect.poll(() => byTestId(a.page, "conversation-title").textContent(), POLL).toBe(bob);
    expect(await a.page.evaluate(() => location.hash)).toBe(`#/${bob}`);
    await expect.poll(() => byTestId(a.page, "connection-status").getAttribute("data-state"), POLL).toBe("open");

    // The favicon: served, so loading the page and signing in logged no error at all (no 404).
    const icon = await a.page.request.get(new URL((await a.page.locator('link[rel="icon"]').getAttribute("href")) ?? "", line.url).href);
    expect(icon.status()).toBe(200);
    expect(icon.headers()["content-type"]).toBe("image/svg+xml");
    expect(a.consoleErrors).toEqual([]);

    // "Start a conversation with" is a label of its own now, and neither it nor the placeholder is cut.
    expect(await byTestId(a.page, "new-conversation-label").textContent()).toBe("Start a conversation with");
    expect(await textCut(a.page, "new-conversation-label")).toBe(false);
    expect(await placeholderCut(a.page, "new-conversation-input")).toBe(false);

    // The length counter appears near the server's limit (4096 code points by default) ...
    const input = byTestId(a.page, "message-input");
    const counter = byTestId(a.page, "message-counter");
    await input.fill("short");
    expect(await counter.isHidden()).toBe(true);
    await input.fill("x".repeat(4000));
    await counter.waitFor();
    expect(digits(await counter.textContent())).toBe("40004096");
    expect(await counter.getAttribute("data-state")).toBe("near");
    // ... counts code points as the server does (an emoji is one) ...
    await input.fill("😀".repeat(4096));
    expect(digits(await counter.textContent())).toBe("40964096");
    expect(await counter.getAttribute("data-state")).toBe("near");
    // ... and an over-long message is refused before sending, in words, the text kept to be shortened.
    await input.fill("y".repeat(5000));
    expect(await counter.getAttribute("data-state")).toBe("over");
    await byTestId(a.page, "send-button").click();
    await expect.poll(() => byTestId(a.page, "chat-error").textContent(), POLL).toMatch(/^This message is 5.?000 characters long; the limit is 4.?096\. Shorten it by 904 characters/);
    expect(await byTestId(a.page, "message").count()).toBe(0);
    expect((await input.inputValue()).length).toBe(5000);
    savePng(join(SCREENSHOTS, "polish-too-long.png"), await a.page.screenshot());

    // An attachment the server refuses (not a type it accepts): shown as a chip, refused in words, kept
    // with the text until the user removes it; then the text goes out alone.
    await byTestId(a.page, "attach-input").setInputFiles({ name: "archive.zip", mimeType: "application/zip", buffer: Buffer.from("PK\x03\x04 not an accepted type", "latin1") });
    await expect.poll(() => byTestId(a.page, "attachment-name").textContent(), POLL).toContain("archive.zip");
    await input.fill("here is the archive");
    await byTestId(a.page, "send-button").click();
    await expect.poll(() => byTestId(a.page, "attachment-error").textContent(), POLL).toContain("This kind of file cannot be sent");
    expect(await byTestId(a.page, "attachment-row").getAttribute("data-state")).toBe("refused");
    expect(await input.inputValue()).toBe("here is the archive");
    expect(await byTestId(a.page, "message").count()).toBe(0);
    savePng(join(SCREENSHOTS, "polish-attachment-refused.png"), await a.page.screenshot());
    await byTestId(a.page, "attachment-remove").click();
    await byTestId(a.page, "attachment-row").waitFor({ state: "hidden" });
    await byTestId(a.page, "send-button").click();
    await expect.poll(() => shownTexts(a.page), POLL).toEqual(["here is the archive"]);
    expect(await byTestId(a.page, "attachment-row").isHidden()).toBe(true);
    expect(await counter.isHidden()).toBe(true);

    // Unread messages show in the tab's title while the conversation is not open, and go once read.
    await byTestId(a.page, "close-conversation").click();
    expect(await a.page.title()).toBe("chat-cluster");
    const bobSocket = await connectReady(g.url, `/ws/${alice}/`, await devToken(g, bob));
    bobSocket.send({ type: "chat_message", message: "are you there?", client_id: "b-1" });
    bobSocket.send({ type: "chat_message", message: "alice?", client_id: "b-2" });
    await expect.poll(() => a.page.title(), POLL).toBe("(2) chat-cluster");
    await a.page.locator(`[data-testid="conversation-item"][data-username="${bob}"]`).click();
    await expect.poll(() => a.page.title(), POLL).toBe("chat-cluster");
    await expect.poll(() => shownTexts(a.page), POLL).toEqual(["here is the archive", "are you there?", "alice?"]);
    await bobSocket.close();

    // The server goes away: a clear banner, and what alice writes meanwhile waits. It comes back on
    // the same address: "Reconnect now" skips the backoff, the banner goes, the message is delivered.
    await line.cut();
    const banner = byTestId(a.page, "offline-banner");
    await banner.waitFor();
    expect(await byTestId(a.page, "offline-banner-text").textContent()).toContain("Reconnecting");
    await input.fill("written while the server was away");
    await byTestId(a.page, "send-button").click();
    await a.page.locator(`[data-testid="message"].pending`).waitFor();
    savePng(join(SCREENSHOTS, "polish-offline-banner.png"), await a.page.screenshot());
    await line.restore();
    await expect
      .poll(async () => {
        if (await banner.isVisible()) await byTestId(a.page, "reconnect-now").click({ timeout: 1_000 }).catch(() => {});
        return banner.isHidden();
      }, POLL)
      .toBe(true);
    await expect.poll(async () => (await shownTexts(a.page)).at(-1), POLL).toBe("written while the server was away");
    expect(await a.page.locator(`[data-testid="message"].pending`).count()).toBe(0);

    // The browser itself offline: the banner says so, and goes when the network is back.
    await a.context.setOffline(true);
    await expect.poll(() => banner.getAttribute("data-state"), POLL).toBe("offline");
    expect(await banner.isVisible()).toBe(true);
    expect(await byTestId(a.page, "offline-banner-text").textContent()).toContain("You are offline");
    await a.context.setOffline(false);
    await banner.waitFor({ state: "hidden" });

    // A phone, and a user with no conversation yet: the list screen says what to do instead of
    // being blank; the start field is not cut at that width either.
    const phone = await a.context.newPage();
    await phone.setViewportSize(PHONE);
    await phone.goto(line.url);
    await signIn(phone, carol);
    await byTestId(phone, "conversations-empty").waitFor();
    expect(await byTestId(phone, "conversations-empty").textContent()).toContain("No conversations yet");
    expect(await byTestId(phone, "no-conversation").isVisible()).toBe(false);
    expect(await placeholderCut(phone, "new-conversation-input")).toBe(false);
    expect(await textCut(phone, "new-conversation-label")).toBe(false);
    savePng(join(SCREENSHOTS, "polish-phone-empty-list.png"), await phone.screenshot());
    // Opening one shows the conversation screen alone; the empty state is gone once it has a message.
    await byTestId(phone, "new-conversation-input").fill(alice);
    await byTestId(phone, "new-conversation-submit").click();
    await expect.poll(() => byTestId(phone, "conversation-title").textContent(), POLL).toBe(alice);
    expect(await byTestId(phone, "conversation-list").isVisible()).toBe(false);
    // The attachment chip fits the phone's composer too; removed, the text goes alone.
    await byTestId(phone, "attach-input").setInputFiles({ name: "a-rather-long-file-name-for-a-phone-screen.txt", mimeType: "text/plain", buffer: Buffer.from("notes") });
    await byTestId(phone, "message-input").fill("hi from a phone");
    await byTestId(phone, "attachment-row").waitFor();
    expect(await phone.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth)).toBe(true);
    savePng(join(SCREENSHOTS, "polish-phone-conversation.png"), await phone.screenshot());
    await byTestId(phone, "attachment-remove").click();
    await byTestId(phone, "send-button").click();
    await expect.poll(() => shownTexts(phone), POLL).toEqual(["hi from a phone"]);
    await byTestId(phone, "close-conversation").click();
    await expect.poll(() => byTestId(phone, "conversations-empty").isHidden(), POLL).toBe(true);
    await phone.close();

    expect(a.pageErrors).toEqual([]);
    // The outage logs failed socket attempts; nothing ever logged a 404.
    expect(a.consoleErrors.filter((e) => e.includes("404"))).toEqual([]);
  }, 120_000);

  it("a message the server refuses offers retry, edit and delete; a refused length teaches the client the server's limit", async () => {
    const prefix = freshPrefix("browser-failed");
    dropPrefixAtEnd(prefix);
    // A gateway stricter than the client's default: 40 characters, one message per second, no burst.
    const g = await startGateway(prefix, { ...DEV, CHAT_MAX_MESSAGE_LENGTH: "40", CHAT_RATE_MESSAGES_PER_SECOND: "1", CHAT_RATE_MESSAGES_BURST: "1" });
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const bobSocket = await connectReady(g.url, `/ws/${alice}/`, await devToken(g, bob));
    const a = await openBrowser(`${pageUrl(g)}#/${bob}`);
    await signIn(a.page, alice);
    await expect.poll(() => byTestId(a.page, "connection-status").getAttribute("data-state"), POLL).toBe("open");
    const input = byTestId(a.page, "message-input");

    // Longer than this server allows, though within the client's default: refused by the server, shown
    // in words with Edit and Delete (a resend would fail the same way), and the client adopts the limit.
    const long = "a message of more than forty characters, refused";
    await input.fill(long);
    await byTestId(a.page, "send-button").click();
    const failed = a.page.locator(`[data-testid="message"].failed`);
    await failed.waitFor();
    expect(await failed.locator(`[data-testid="message-failure-reason"]`).textContent()).toBe("Not sent: longer than this server's limit of 40 characters.");
    expect(await failed.locator(`[data-testid="message-retry"]`).count()).toBe(0);
    await input.fill("x".repeat(39));
    expect(digits(await byTestId(a.page, "message-counter").textContent())).toBe("3940");
    await failed.locator(`[data-testid="message-edit"]`).click();
    expect(await input.inputValue()).toBe(long);
    expect(await failed.count()).toBe(0);
    expect(await byTestId(a.page, "message-counter").getAttribute("data-state")).toBe("over");

    // Three messages at once against one message per second: the server takes at most one; the others
    // fail with Retry and Delete.
    const three = ["one", "two", "three"];
    await a.page.evaluate((texts) => {
      const field = document.querySelector<HTMLInputElement>('[data-testid="message-input"]')!;
      const form = document.querySelector<HTMLFormElement>('[data-testid="composer"]')!;
      for (const t of texts) {
        field.value = t;
        form.requestSubmit();
      }
    }, three);
    await expect.poll(() => a.page.locator(`[data-testid="message"].pending`).count(), POLL).toBe(0);
    const failedTexts = await failed.locator(`[data-testid="message-text"]`).allTextContents();
    expect(failedTexts.length).toBeGreaterThanOrEqual(2);
    const accepted = three.filter((t) => !failedTexts.includes(t));
    expect(await failed.first().locator(`[data-testid="message-failure-reason"]`).textContent()).toBe("Not sent: you are sending too fast. Retry in a moment.");
    savePng(join(SCREENSHOTS, "polish-failed-messages.png"), await a.page.screenshot());

    // Delete drops one; Retry resends the other (same client_id) until the server takes it.
    const [dropped, retried] = failedTexts as [string, string];
    await failed.filter({ hasText: dropped }).locator(`[data-testid="message-delete"]`).click();
    const toRetry = a.page.locator(`[data-testid="message"]`).filter({ hasText: retried });
    await expect
      .poll(async () => {
        const retry = toRetry.locator(`[data-testid="message-retry"]`);
        if (await retry.isVisible()) await retry.click({ timeout: 1_000 }).catch(() => {});
        return shownTexts(a.page);
      }, { ...POLL, interval: 300 })
      .toEqual([...accepted, retried]);
    expect(await a.page.locator(`[data-testid="message"]`).filter({ hasText: dropped }).count()).toBe(0);
    expect(await failed.count()).toBe(failedTexts.length - 2);

    // Bob received exactly what was accepted: never the refused, deleted or failed ones, the retried once.
    await bobSocket.until((frames) => frames.filter((f) => f.type === "chat_message").length === accepted.length + 1, 10_000, "bob's copies");
    expect(bobSocket.ofType("chat_message").map((f) => f["message"])).toEqual([...accepted, retried]);
    expect(a.pageErrors).toEqual([]);
  }, 90_000);
});
