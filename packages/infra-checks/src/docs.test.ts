import { execFileSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { INFRA, K6, REPO_ROOT } from "./paths.js";

const names = (text: string, pattern: RegExp) => new Set([...text.matchAll(pattern)].map((m) => m[1]!));

describe("infra/README.md", () => {
  it("lists exactly the metrics the gateway and the worker register", () => {
    const registered = names(
      ["apps/gateway/dist/metrics.js", "apps/worker/dist/metrics.js"].map((f) => readFileSync(join(REPO_ROOT, f), "utf8")).join("\n"),
      /name: "(chat_(?:gateway|worker)_[a-z_]+)"/g,
    );
    const table = names(readFileSync(join(INFRA, "README.md"), "utf8"), /^\| `(chat_(?:gateway|worker)_[a-z_]+)` \|/gm);
    expect([...table].sort()).toEqual([...registered].sort());
  });
});

describe("k6/README.md", () => {
  it("explains every threshold the scripts set", () => {
    const scripts = ["chat.js", "notifications.js", "churn.js", "soak.js"].map((f) => readFileSync(join(K6, f), "utf8")).join("\n");
    const thresholds = names(scripts, /^\s+([a-z_]+): \[/gm);
    const readme = readFileSync(join(K6, "README.md"), "utf8");
    for (const metric of thresholds) expect(readme, metric).toContain(`\`${metric}\``);
  });
});

describe("the repository's Markdown", () => {
  const files = execFileSync("git", ["ls-files", "*.md"], { cwd: REPO_ROOT, encoding: "utf8" }).split("\n").filter(Boolean);

  it("links only to files inside the repository that exist", () => {
    const broken: string[] = [];
    for (const file of files) {
      const text = readFileSync(join(REPO_ROOT, file), "utf8");
      for (const [, target] of text.matchAll(/\]\(([^)\s]+)\)/g)) {
        if (/^(https?:|mailto:|#)/.test(target!)) continue;
        const path = resolve(dirname(join(REPO_ROOT, file)), target!.split("#")[0]!);
        if (!path.startsWith(REPO_ROOT) || !existsSync(path)) broken.push(`${file}: ${target}`);
      }
    }
    expect(broken).toEqual([]);
  });

  it("mentions no file of the steering folder next to the repository (../shared/), which readers do not have", () => {
    const found = files.filter((file) => readFileSync(join(REPO_ROOT, file), "utf8").includes("../shared/"));
    expect(found).toEqual([]);
  });

  it("names no issue number a reader cannot open", () => {
    const found = files.flatMap((file) =>
      [...readFileSync(join(REPO_ROOT, file), "utf8").matchAll(/\b[Ii]ssues? #?\d+/g)].map((m) => `${file}: ${m[0]}`),
    );
    expect(found).toEqual([]);
  });
});
