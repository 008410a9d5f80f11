import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { chromium, type BrowserContext, type Page } from "playwright-core";
import { expect, onTestFinished } from "vitest";

/** Debian's chromium (`apt-get install -y chromium`); CI installs it. Without it the browser suites skip. */
export const CHROMIUM_PATH = "/usr/bin/chromium";
export const CHROMIUM_MISSING = !existsSync(CHROMIUM_PATH);

/** Quiet, deterministic headless Chromium: no GPU, no sandbox (containers), no background traffic. */
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-quic",
  "--no-first-run",
  "--disable-component-update",
  "--disable-sync",
];

export const VIEWPORT = { width: 900, height: 600 };

export interface BrowserSession {
  context: BrowserContext;
  page: Page;
  /** Uncaught exceptions of the page's scripts; a test should expect this to stay empty. */
  pageErrors: string[];
  /** Errors the page logged to its console from the first load on (failed loads such as a 404 among them), with their URL. */
  consoleErrors: string[];
}

/**
 * A browser of its own (fresh --user-data-dir, so no storage is shared with another session) with one
 * page at `url`. Closed, and its profile removed, when the test ends.
 */
export async function openBrowser(url: string): Promise<BrowserSession> {
  const userDataDir = mkdtempSync(join(tmpdir(), "chat-chromium-"));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM_PATH,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: VIEWPORT,
  });
  onTestFinished(async () => {
    await context.close().catch(() => {});
    rmSync(userDataDir, { recursive: true, force: true });
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(15_000);
  const pageErrors: string[] = [];
  page.on("pageerror", (err) => pageErrors.push(err.message));
  const consoleErrors: string[] = [];
  page.on("console", (m) => {
    if (m.type() === "error") consoleErrors.push(`${m.text()} (${m.location().url})`);
  });
  await page.goto(url);
  return { context, page, pageErrors, consoleErrors };
}

/** Writes `png` under `path`, creating its directory. */
export function savePng(path: string, png: Buffer): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, png);
}

/** Screenshots of several pages side by side, each under its label, as one PNG (rendered by `host`'s browser). */
export async function sideBySide(host: BrowserContext, shots: { label: string; png: Buffer }[]): Promise<Buffer> {
  // A context's newPage takes no options: the viewport is set on the page.
  const page = await host.newPage();
  try {
    await page.setViewportSize({ width: VIEWPORT.width * shots.length + 16 * (shots.length + 1), height: VIEWPORT.height + 48 });
    await page.setContent(
      `<body style="margin:0;padding:8px;display:flex;gap:16px;background:#d0d4da;font:600 14px system-ui,sans-serif">` +
        shots.map((_, i) => `<figure style="margin:0"><figcaption style="padding:4px 0" id="c${i}"></figcaption><img id="i${i}"></figure>`).join("") +
        `</body>`,
    );
    // Labels and images go in through the DOM, not the markup, like any other text.
    await page.evaluate(
      (items) => {
        items.forEach(({ label, src }, i) => {
          document.getElementById(`c${i}`)!.textContent = label;
          (document.getElementById(`i${i}`) as HTMLImageElement).src = src;
        });
        return Promise.all([...document.images].map((img) => img.decode()));
      },
      shots.map(({ label, png }) => ({ label, src: `data:image/png;base64,${png.toString("base64")}` })),
    );
    return await page.screenshot({ fullPage: true });
  } finally {
    await page.close();
  }
}

/** How long and how often the browser suites poll a page for a state. */
export const POLL = { timeout: 15_000, interval: 100 };

/** An element of the client by its data-testid. */
export const byTestId = (page: Page, id: string) => page.locator(`[data-testid="${id}"]`);

/** Signs in through the page's form (a development gateway's token) and waits for the app. */
export async function signIn(page: Page, username: string): Promise<void> {
  await byTestId(page, "signin-username").fill(username);
  await byTestId(page, "signin-submit").click();
  await expect.poll(() => byTestId(page, "current-user").textContent(), POLL).toBe(username);
}

/** Types a message into the open conversation and sends it. */
export async function sendFromPage(page: Page, text: string): Promise<void> {
  await byTestId(page, "message-input").fill(text);
  await byTestId(page, "send-button").click();
}

/** Texts of the messages the server echoed (they carry an id), top to bottom. */
export function shownTexts(page: Page): Promise<string[]> {
  return page.locator(`[data-testid="message"][data-id] [data-testid="message-text"]`).allTextContents();
}
