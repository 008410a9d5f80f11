import { readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { loadProcesses, type AppProcess } from "./app-settings.js";
import { checkManifests, preStopSeconds } from "./k8s-rules.js";
import { typeCheckObjects, validateWithModels } from "./k8s-schema.js";
import { containersOf, objectId, parseYamlDocuments, podSpecs, render, type K8sObject } from "./kustomize.js";
import { FIXTURES, K8S, REPO_ROOT } from "./paths.js";

/** Secrets production reads by name and the operator creates (infra/README.md). */
const EXTERNAL_SECRETS = ["chat-jwt", "chat-backends"];
const COMPONENTS = readdirSync(join(K8S, "components")).map((c) => join(K8S, "components", c));

let processes: AppProcess[];
beforeAll(async () => {
  processes = await loadProcesses();
});

const renders: Record<string, () => K8sObject[]> = {
  base: () => render(join(K8S, "base")),
  dev: () => render(join(K8S, "overlays/dev")),
  production: () => render(join(K8S, "overlays/production")),
  "dev + every component": () => render(K8S, { resources: [join(K8S, "overlays/dev")], components: COMPONENTS }),
  "production + every component": () => render(K8S, { resources: [join(K8S, "overlays/production")], components: COMPONENTS }),
};

function yamlFiles(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile() && /\.ya?ml$/.test(e.name))
    .map((e) => join(e.parentPath, e.name));
}

const fixture = (name: string) => parseYamlDocuments(readFileSync(join(FIXTURES, name), "utf8"), name) as K8sObject[];

describe("every YAML file under infra/k8s", () => {
  it.each(yamlFiles(K8S).map((f) => relative(REPO_ROOT, f)))("%s parses (no duplicate keys, no YAML errors)", (file) => {
    expect(() => parseYamlDocuments(readFileSync(join(REPO_ROOT, file), "utf8"), file)).not.toThrow();
  });
});

describe.each(Object.keys(renders))("kustomize render of %s", (name) => {
  let objects: K8sObject[];
  beforeAll(() => {
    objects = renders[name]!();
  });

  it("validates against the Kubernetes API schemas (kubernetes-models)", async () => {
    expect(await validateWithModels(objects)).toEqual([]);
  });

  it("has no unknown fields or wrong types (TypeScript against the models' interfaces)", () => {
    expect(typeCheckObjects(objects)).toEqual([]);
  });

  it("passes our rules: hardening, probes, drain budget, one image, known variables", () => {
    expect(checkManifests(objects, { processes, externalSecrets: EXTERNAL_SECRETS })).toEqual([]);
  });
});

describe("overlays", () => {
  it("production creates no Secret and runs no Redis or Postgres: both are external", () => {
    const objects = renders.production!();
    expect(objects.filter((o) => o.kind === "Secret").map(objectId)).toEqual([]);
    const images = objects.flatMap((o) => podSpecs(o).flatMap((p) => containersOf(p).map((c) => String(c["image"]))));
    expect(images.filter((i) => /redis|postgres/.test(i))).toEqual([]);
    expect(objects.every((o) => o.kind === "Namespace" || o.metadata.namespace === "chat")).toBe(true);
  });

  it("production pulls a versioned image from a registry", () => {
    const images = new Set(renders.production!().flatMap((o) => podSpecs(o).flatMap((p) => containersOf(p).map((c) => String(c["image"])))));
    expect([...images]).toHaveLength(1);
    expect([...images][0]).toMatch(/^[^/]+\.[^/]+\/.+:\d+\.\d+\.\d+$/);
  });

  it("dev runs Redis and Postgres and defines the Secrets the apps read", () => {
    const objects = renders.dev!();
    const names = objects.map(objectId);
    for (const id of ["Deployment/chat-dev/redis", "Deployment/chat-dev/postgres", "Secret/chat-dev/chat-jwt", "Secret/chat-dev/chat-backends", "Namespace/chat-dev"]) {
      expect(names).toContain(id);
    }
  });

  it("the gateway and worker run the processes of the image, the Job runs the migrations", () => {
    const objects = renders.production!();
    const command = (name: string) => podSpecs(objects.find((o) => o.metadata.name === name)!).flatMap((p) => containersOf(p).map((c) => c["command"]));
    expect(command("chat-gateway")).toEqual([["node", "apps/gateway/dist/main.js"]]);
    expect(command("chat-worker")).toEqual([["node", "apps/worker/dist/main.js"]]);
    expect(command("chat-migrate")).toEqual([["node", "packages/db/dist/migrate-cli.js"]]);
  });

  it("the optional open-sockets metric is the gateway's gauge, per pod", () => {
    const hpa = renders["production + every component"]!().find((o) => o.kind === "HorizontalPodAutoscaler")!;
    const metrics = (hpa["spec"] as { metrics: { type: string; pods?: { metric: { name: string } } }[] }).metrics;
    expect(metrics.map((m) => m.type)).toEqual(["Resource", "Pods"]);
    expect(metrics[1]!.pods!.metric.name).toBe("chat_gateway_open_sockets");
    expect(readFileSync(join(REPO_ROOT, "apps/gateway/dist/metrics.js"), "utf8")).toContain('"chat_gateway_open_sockets"');
  });

  it("the redis-cluster component pins CHAT_PARTITIONS for gateway and worker alike, and runs no more workers than partitions", () => {
    const objects = renders["production + every component"]!();
    const data = (name: string) => objects.find((o) => o.kind === "ConfigMap" && o.metadata.name === name)!["data"] as Record<string, string>;
    const partitions = data("chat-gateway-config")["CHAT_PARTITIONS"];
    expect(partitions).toBe("16");
    expect(data("chat-worker-config")["CHAT_PARTITIONS"]).toBe(partitions);
    const worker = objects.find((o) => o.kind === "Deployment" && o.metadata.name === "chat-worker")!;
    const replicas = (worker["spec"] as { replicas: number }).replicas;
    expect(replicas).toBeGreaterThan(2);
    expect(replicas).toBeLessThanOrEqual(Number(partitions));
  });
});

describe("the checks reject broken manifests", () => {
  it("fixtures/broken-deployment.yaml: no probes, privileged, latest, grace below the drain, unknown and invalid variables", () => {
    const violations = checkManifests(fixture("broken-deployment.yaml"), { processes, externalSecrets: EXTERNAL_SECRETS });
    const messages = violations.map((v) => `${v.rule}: ${v.message}`);
    const expected = [
      /^probes: container gateway has no readinessProbe/,
      /^probes: container gateway has no livenessProbe/,
      /^container-security: container gateway: privileged must not be true/,
      /^container-security: container gateway: readOnlyRootFilesystem must be true/,
      /^container-security: container gateway: capabilities.drop must include ALL/,
      /^pod-security: runAsNonRoot must be true/,
      /^pod-security: seccompProfile.type must be RuntimeDefault/,
      /^image: container gateway: image tag latest/,
      /^resources: container gateway: needs cpu and memory requests/,
      /^env: container gateway: CHAT_DRAIN_WINDOW \(env\) is not read by the gateway/,
      /^env: container gateway: CHAT_IDLE_TIMEOUT_SECONDS="two minutes" \(env\) is invalid/,
      /^env: container gateway: the gateway needs CHAT_JWT_SECRET/,
      /^env: container gateway: the gateway needs DATABASE_URL/,
      /^drain: container gateway has no preStop sleep/,
      /^drain: terminationGracePeriodSeconds 5 must exceed/,
      /^hpa: Deployment\/chat-gateway sets spec.replicas/,
      /^hpa: minReplicas below 2/,
      /^hpa: a CPU target needs cpu requests/,
    ];
    for (const pattern of expected) expect(messages, String(pattern)).toContainEqual(expect.stringMatching(pattern));
  });

  it("fixtures/broken-schema.yaml: a misspelt field and a wrong type", async () => {
    const objects = fixture("broken-schema.yaml");
    expect(await validateWithModels(objects)).toContainEqual({ object: "Deployment/chat-worker", message: "/spec/replicas must be integer" });
    const typeProblems = typeCheckObjects(objects).map((p) => p.message);
    expect(typeProblems).toContainEqual(expect.stringMatching(/'"readinesProbe"' does not exist in type 'IContainer'/));
    expect(typeProblems).toContainEqual(expect.stringMatching(/Type 'string' is not assignable to type 'number'. \[at: "replicas": "two"/));
  });

  it("a grace period that only covers the drain window (no margin) is rejected", () => {
    const objects = renders.production!();
    const gateway = objects.find((o) => o.kind === "Deployment" && o.metadata.name === "chat-gateway")!;
    const pod = podSpecs(gateway)[0]!;
    pod["terminationGracePeriodSeconds"] = preStopSeconds(containersOf(pod)[0]!) + 10;
    expect(checkManifests(objects, { processes, externalSecrets: EXTERNAL_SECRETS }).map((v) => v.rule)).toContain("drain");
  });

  it("a gateway and a worker on different Redis prefixes are rejected", () => {
    const objects = renders.production!();
    const workerConfig = objects.find((o) => o.kind === "ConfigMap" && o.metadata.name === "chat-worker-config")!;
    (workerConfig["data"] as Record<string, string>)["CHAT_REDIS_PREFIX"] = "other:";
    const violations = checkManifests(objects, { processes, externalSecrets: EXTERNAL_SECRETS });
    expect(violations).toContainEqual({ object: "Deployment/chat-worker", rule: "shared", message: 'CHAT_REDIS_PREFIX must be the same for every chat process, here value "other:"' });
  });

  it("a gateway and a worker on different CHAT_PARTITIONS are rejected, and so is a count set on one side only", () => {
    const objects = renders["production + every component"]!();
    const workerConfig = objects.find((o) => o.kind === "ConfigMap" && o.metadata.name === "chat-worker-config")!;
    const data = workerConfig["data"] as Record<string, string>;
    data["CHAT_PARTITIONS"] = "32";
    expect(checkManifests(objects, { processes, externalSecrets: EXTERNAL_SECRETS })).toContainEqual({
      object: "Deployment/chat-worker",
      rule: "shared",
      message: 'CHAT_PARTITIONS must be the same for every chat process, here value "32"',
    });
    delete data["CHAT_PARTITIONS"];
    expect(checkManifests(objects, { processes, externalSecrets: EXTERNAL_SECRETS })).toContainEqual({
      object: "Deployment/chat-worker",
      rule: "shared",
      message: 'CHAT_PARTITIONS must be the same for every chat process, here value "16" (default)',
    });
  });

  it("a Secret reference that is neither rendered nor documented as external is rejected", () => {
    const violations = checkManifests(renders.production!(), { processes, externalSecrets: [] });
    expect(violations.map((v) => v.message)).toContainEqual(expect.stringMatching(/reads Secret chat-jwt, which is neither rendered/));
  });
});
