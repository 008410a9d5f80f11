import { join } from "node:path";
import type { Page } from "playwright-core";
import { describe, expect, it } from "vitest";
import { dropPrefixAtEnd, freshPrefix, REPO_ROOT, startGateway, startWorker, uniqueUser, type Gateway } from "./helpers/index.js";
import { CHROMIUM_MISSING, CHROMIUM_PATH, POLL, byTestId, openBrowser, savePng, sendFromPage, shownTexts, sideBySide, signIn } from "./helpers/browser.js";

// The browser client's group conversations, in three real Chromium sessions (alice, bob, carol) on two
// gateway nodes with a worker persisting. Every wait polls.

const SCREENSHOTS = join(REPO_ROOT, process.env["UPDATE_SCREENSHOTS"] === "1" ? "docs/screenshots" : "test-results/screenshots");

const pageUrl = (g: Gateway) => `http://127.0.0.1:${g.port}/`;

const item = (page: Page, key: string) => page.locator(`[data-testid="conversation-item"][data-username="${key}"]`);

/** The authors of the messages shown, top to bottom ("" for this user's own). */
const authors = (page: Page) =>
  page.locator(`[data-testid="message"][data-id]`).evaluateAll((lis) => lis.map((li) => li.querySelector(`[data-testid="message-author"]`)?.textContent ?? ""));

/** The text of the message that shows the seen mark, and the mark's text. */
const seen = (page: Page) =>
  page.locator(`[data-testid="seen-mark"]`).evaluateAll((marks) => marks.map((m) => [m.closest(`[data-testid="message"]`)?.querySelector(`[data-testid="message-text"]`)?.textContent ?? null, m.textContent]));

const systemLines = (page: Page) => byTestId(page, "system-event").allTextContents();

describe.skipIf(CHROMIUM_MISSING)(`browser client: groups${CHROMIUM_MISSING ? ` (skipped: no browser at ${CHROMIUM_PATH}; apt-get install -y chromium)` : ""}`, () => {
  it("three users: create a group, chat, typing, seen by, online dots, remove and add a member", async () => {
    const prefix = freshPrefix("browser-groups");
    dropPrefixAtEnd(prefix);
    const env = { NODE_ENV: "development", CHAT_JWT_SECRET: "" };
    const [g1, g2] = await Promise.all([startGateway(prefix, env), startGateway(prefix, env)]);
    await startWorker(prefix);
    const [alice, bob, carol] = [uniqueUser("alice"), uniqueUser("bob"), uniqueUser("carol")];
    const [a, b, c] = await Promise.all([openBrowser(pageUrl(g1)), openBrowser(pageUrl(g2)), openBrowser(pageUrl(g1))]);
    await signIn(a.page, alice);
    await signIn(b.page, bob);
    await signIn(c.page, carol);

    // Online dots: alice writes to carol; carol's list shows alice online (signed in, on any node).
    await byTestId(a.page, "new-conversation-input").fill(carol);
    await byTestId(a.page, "new-conversation-submit").click();
    await sendFromPage(a.page, "psst, a group is coming");
    await expect.poll(() => item(c.page, alice).getAttribute("data-online"), POLL).toBe("true");
    expect(await item(c.page, alice).locator(`[data-testid="online-dot"]`).isVisible()).toBe(true);

    // Alice creates the group from the form; the page opens it.
    await byTestId(a.page, "new-group-toggle").click();
    await byTestId(a.page, "new-group-name").fill("Weekend");
    await byTestId(a.page, "new-group-members").fill(`${bob}, ${carol}`);
    await byTestId(a.page, "new-group-submit").click();
    await expect.poll(() => byTestId(a.page, "conversation-title").textContent(), POLL).toBe("Weekend");
    const id = /#\/groups\/([0-9a-f-]{36})$/.exec(a.page.url())?.[1];
    expect(id).toBeDefined();
    const key = `#${id}`;
    await expect.poll(() => systemLines(a.page), POLL).toEqual([`${alice} created the group "Weekend"`]);
    await sendFromPage(a.page, "hi both");

    // Bob and carol find it in their lists (a group has no online dot) and open it.
    for (const s of [b, c]) {
      await expect.poll(() => item(s.page, key).getAttribute("data-kind"), POLL).toBe("group");
      expect(await item(s.page, key).locator(`[data-testid="conversation-name"]`).textContent()).toBe("Weekend");
      expect(await item(s.page, key).locator(`[data-testid="online-dot"]`).isVisible()).toBe(false);
      await item(s.page, key).click();
      await expect.poll(() => shownTexts(s.page), POLL).toEqual(["hi both"]);
      expect(await authors(s.page)).toEqual([alice]);
    }
    await expect.poll(() => byTestId(a.page, "presence").textContent(), POLL).toBe("2 others in this chat");

    // Both have it open, so both read: alice's message is seen by both.
    await expect.poll(() => seen(a.page), POLL).toEqual([["hi both", `Seen by ${[bob, carol].sort().join(", ")}`]]);

    // Typing shows under the header of the others, with who types.
    await byTestId(c.page, "message-input").fill("let me think");
    for (const s of [a, b]) await expect.poll(() => byTestId(s.page, "typing-indicator").textContent(), POLL).toBe(`${carol} is typing…`);
    await byTestId(c.page, "send-button").click();
    await sendFromPage(b.page, "saturday?");
    for (const s of [a, b, c]) await expect.poll(() => shownTexts(s.page), POLL).toEqual(["hi both", "let me think", "saturday?"]);
    expect(await authors(a.page)).toEqual(["", carol, bob]);
    savePng(
      join(SCREENSHOTS, "group-chat.png"),
      await sideBySide(a.context, [
        { label: alice, png: await a.page.screenshot() },
        { label: bob, png: await b.page.screenshot() },
        { label: carol, png: await c.page.screenshot() },
      ]),
    );

    // Alice removes carol from the members panel: carol's page closes the group and drops it from her list.
    await byTestId(a.page, "group-members-toggle").click();
    await expect.poll(() => byTestId(a.page, "group-member").count(), POLL).toBe(3);
    await a.page.locator(`[data-testid="group-member"][data-username="${carol}"] [data-testid="group-member-remove"]`).click();
    await expect.poll(() => byTestId(c.page, "list-error").textContent(), POLL).toBe("You are no longer a member of that group.");
    expect(await byTestId(c.page, "conversation-view").isVisible()).toBe(false);
    await expect.poll(() => item(c.page, key).count(), POLL).toBe(0);
    for (const s of [a, b]) await expect.poll(async () => (await systemLines(s.page)).at(-1), POLL).toBe(`${alice} removed ${carol}`);
    await expect.poll(() => byTestId(a.page, "group-member").count(), POLL).toBe(2);

    // Added back: the group is in her list again once someone writes, with that message unread.
    await byTestId(a.page, "group-add-input").fill(carol);
    await byTestId(a.page, "group-add-submit").click();
    await expect.poll(async () => (await systemLines(b.page)).at(-1), POLL).toBe(`${alice} added ${carol}`);
    await sendFromPage(b.page, "welcome back");
    await expect.poll(() => item(c.page, key).locator(`[data-testid="unread-badge"]`).textContent(), POLL).toBe("1");
    await item(c.page, key).click();
    await expect.poll(async () => (await shownTexts(c.page)).at(-1), POLL).toBe("welcome back");

    for (const s of [a, b, c]) {
      expect(s.pageErrors).toEqual([]);
      expect(s.consoleErrors).toEqual([]);
    }
  }, 120_000);
});
