import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { settingsTable } from "@chat/config";
import { REPO_ROOT } from "./helpers/index.js";

// The README's configuration tables are the operators' reference: they must list every setting
// the apps read, with its real default.
describe("README configuration tables", () => {
  it.each([
    ["gateway", "apps/gateway/dist/config.js", "GATEWAY_SETTINGS", "Gateway (`npm run gateway`)", "Worker (`npm run worker`)"],
    ["worker", "apps/worker/dist/config.js", "WORKER_SETTINGS", "Worker (`npm run worker`)", "## "],
  ])("list every %s setting with its default", async (_app, module, exported, from, to) => {
    const full = readFileSync(`${REPO_ROOT}README.md`, "utf8");
    const start = full.indexOf(from);
    expect(start, `README section ${from}`).toBeGreaterThan(0);
    const readme = full.slice(start, full.indexOf(to, start + from.length));
    const settings = ((await import(`${REPO_ROOT}${module}`)) as Record<string, Parameters<typeof settingsTable>[0]>)[exported]!;
    for (const row of settingsTable(settings).split("\n")) {
      const [, variable, defaultValue] = row.split("|").map((c) => c.trim());
      const line = readme.split("\n").find((l) => l.startsWith(`| ${variable} |`));
      expect(line, `README row for ${variable}`).toBeDefined();
      expect(line!.split("|")[2]!.trim(), `default of ${variable}`).toBe(defaultValue);
    }
  });
});
