import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { FIXTURES, INFRA, REPO_ROOT } from "./paths.js";

/**
 * Debian's linters, when installed (apt-get install shellcheck yamllint; .ci/run can add them):
 * shell scripts and every YAML file of infra/ and k6/. Skipped, and said so, where they are missing.
 */

const has = (tool: string) => spawnSync(tool, ["--version"]).status === 0;
/** A suite's name that says why it was skipped, when it was. */
const named = (tool: string) => (has(tool) ? tool : `${tool} (skipped: ${tool} is not installed; apt-get install ${tool})`);

describe.skipIf(!has("shellcheck"))(named("shellcheck"), () => {
  // Warnings and errors; info-level style notes are left to taste.
  const shellcheck = (file: string) => spawnSync("shellcheck", ["--severity=warning", file], { encoding: "utf8" });

  it.each(["infra/docker/assemble-runtime.sh", ".ci/run"])("%s", (file) => {
    const r = shellcheck(join(REPO_ROOT, file));
    expect(r.stdout).toBe("");
    expect(r.status).toBe(0);
  });

  it("rejects fixtures/broken.sh", () => {
    const r = shellcheck(join(FIXTURES, "broken.sh"));
    expect(r.status).not.toBe(0);
    expect(r.stdout).toMatch(/SC2164/);
  });
});

describe.skipIf(!has("yamllint"))(named("yamllint"), () => {
  const yamllint = (...paths: string[]) =>
    spawnSync("yamllint", ["-f", "parsable", "-c", join(INFRA, ".yamllint.yaml"), ...paths], { encoding: "utf8" });

  it("infra/ and k6/", () => {
    const r = yamllint(INFRA, join(REPO_ROOT, "k6"));
    expect(r.stdout).toBe("");
    expect(r.status).toBe(0);
  });

  it("rejects fixtures/broken-yamllint.yaml", () => {
    const r = yamllint(join(FIXTURES, "broken-yamllint.yaml"));
    expect(r.status).not.toBe(0);
    expect(r.stdout).toMatch(/duplication of key "kind"/);
    expect(r.stdout).toMatch(/trailing spaces/);
  });
});
