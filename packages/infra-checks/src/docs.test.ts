import { readFileSync } from "node:fs";
import { join } from "node:path";
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
