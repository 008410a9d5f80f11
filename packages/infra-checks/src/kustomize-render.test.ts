import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { objectId, parseYamlDocuments, render, type K8sObject } from "./kustomize.js";
import { applyJsonPatch, strategicMerge } from "./patch.js";
import { K8S } from "./paths.js";

describe("the in-process renderer", () => {
  it("merges associative lists by key, patch items first, like kustomize", () => {
    const base = { spec: { containers: [{ name: "a", env: [{ name: "A", value: "1" }, { name: "X", value: "x" }] }] } };
    const patch = { spec: { containers: [{ name: "a", env: [{ name: "B", value: "2" }, { name: "A", value: "9" }] }] } };
    expect(strategicMerge(base, patch, "Deployment")).toEqual({
      spec: { containers: [{ name: "a", env: [{ name: "B", value: "2" }, { name: "A", value: "9" }, { name: "X", value: "x" }] }] },
    });
  });

  it("replaces lists without a merge key and deletes keys patched to null", () => {
    expect(strategicMerge({ args: ["a", "b"], keep: 1, drop: 2 }, { args: ["c"], drop: null }, "Deployment")).toEqual({ args: ["c"], keep: 1 });
  });

  it("applies JSON 6902 operations and refuses paths that do not exist", () => {
    expect(applyJsonPatch({ a: [1] }, [{ op: "add", path: "/a/-", value: 2 }, { op: "replace", path: "/a/0", value: 0 }])).toEqual({ a: [0, 2] });
    expect(() => applyJsonPatch({ a: {} }, [{ op: "replace", path: "/a/b", value: 1 }])).toThrow(/does not exist/);
  });

  it("refuses kustomization fields it does not implement, instead of ignoring them", () => {
    expect(() => render(join(K8S, "base"), { resources: [], commonLabels: { a: "b" } })).toThrow(/"commonLabels" is not supported/);
  });

  it("refuses a patch that matches nothing (a renamed object would otherwise lose its patch silently)", () => {
    expect(() =>
      render(join(K8S, "base"), { resources: ["."], patches: [{ target: { kind: "Deployment", name: "nope" }, patch: "- op: remove\n  path: /spec" }] }),
    ).toThrow(/matches no object/);
  });
});

function kubectlKustomizeWorks(): boolean {
  const r = spawnSync("kubectl", ["kustomize", "--help"], { encoding: "utf8" });
  return r.status === 0;
}

const sortById = (objects: K8sObject[]) => [...objects].sort((a, b) => objectId(a).localeCompare(objectId(b)));

/**
 * `kubectl kustomize` (kustomize built into kubectl) renders without a cluster. Where kubectl is
 * installed, the in-process render must be identical, so the checks above look at what kubectl applies.
 */
const kubectl = kubectlKustomizeWorks();
describe.skipIf(!kubectl)(`the in-process render equals \`kubectl kustomize\`${kubectl ? "" : " (skipped: kubectl is not installed; it is not packaged by Debian, install it by hand to run this)"}`, () => {
  const scratch = mkdtempSync(join(tmpdir(), "infra-checks-"));
  afterAll(() => rmSync(scratch, { recursive: true, force: true }));
  const kubectl = (dir: string) =>
    parseYamlDocuments(execFileSync("kubectl", ["kustomize", dir], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] }), `kubectl kustomize ${dir}`) as K8sObject[];

  it.each(["base", "overlays/dev", "overlays/production"])("%s", (dir) => {
    expect(sortById(render(join(K8S, dir)))).toEqual(sortById(kubectl(join(K8S, dir))));
  });

  it.each(["overlays/dev", "overlays/production"])("%s with every component", (dir) => {
    // kustomize refuses absolute paths in a kustomization: write one with relative paths.
    const components = readdirSync(join(K8S, "components")).map((c) => relative(scratch, join(K8S, "components", c)));
    writeFileSync(join(scratch, "kustomization.yaml"), JSON.stringify({ resources: [relative(scratch, join(K8S, dir))], components }));
    const ours = render(scratch);
    expect(ours.some((o) => o.kind === "NetworkPolicy")).toBe(true);
    expect(sortById(ours)).toEqual(sortById(kubectl(scratch)));
  });
});
