import { processOf, type AppProcess } from "./app-settings.js";
import { containersOf, parseImage, podSpecs, type K8sObject } from "./kustomize.js";
import { isObject, type Json, type JsonObject } from "./patch.js";

/**
 * Our rules for rendered manifests, beyond what the API schemas say: hardening, probes, the drain
 * budget, one image, and environment variables that the processes actually read.
 */

export interface Violation {
  object: string;
  rule: string;
  message: string;
}

export interface RuleOptions {
  /** The processes of the image (from the built apps' settings tables). */
  processes: AppProcess[];
  /** Secrets referenced by name that the manifests do not create (made by the operator). */
  externalSecrets?: string[];
  /** Seconds added to preStop + drain window that terminationGracePeriodSeconds must still exceed. */
  drainMarginSeconds?: number;
}

/** Seconds a gateway needs after SIGTERM besides the drain window: presence release, Redis and Postgres close. */
export const DEFAULT_DRAIN_MARGIN_SECONDS = 5;

/**
 * Settings on which the gateway, the worker and the migration must agree. CHAT_PARTITIONS: a process
 * with another count than the one recorded in Redis refuses to start (docs/scaling.md).
 */
const SHARED_SETTINGS = ["REDIS_URL", "DATABASE_URL", "CHAT_REDIS_PREFIX", "CHAT_PARTITIONS"];

const WORKLOADS = new Set(["Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod"]);
const LONG_RUNNING = new Set(["Deployment", "StatefulSet", "DaemonSet"]);

const label = (o: K8sObject) => `${o.kind}/${o.metadata.name}`;
const obj = (v: Json | undefined): JsonObject => (isObject(v) ? v : {});
const arr = (v: Json | undefined): JsonObject[] => (Array.isArray(v) ? (v.filter(isObject) as JsonObject[]) : []);

function templateLabels(o: K8sObject): Record<string, string> {
  const spec = obj(o["spec"]);
  const template = o.kind === "CronJob" ? obj(obj(obj(spec["jobTemplate"])["spec"])["template"]) : obj(spec["template"]);
  return obj(obj(template["metadata"])["labels"]) as Record<string, string>;
}

const matches = (selector: Record<string, Json>, labels: Record<string, string>) =>
  Object.keys(selector).length > 0 && Object.entries(selector).every(([k, v]) => labels[k] === v);

/** The preStop delay in seconds: `sleep N` as exec or the sleep action; 0 when there is none. */
export function preStopSeconds(container: JsonObject): number {
  const preStop = obj(obj(container["lifecycle"])["preStop"]);
  const sleepAction = obj(preStop["sleep"]);
  if (typeof sleepAction["seconds"] === "number") return sleepAction["seconds"];
  const command = obj(preStop["exec"])["command"];
  if (Array.isArray(command) && command[0] === "sleep" && /^\d+$/.test(String(command[1]))) return Number(command[1]);
  return 0;
}

export function checkManifests(objects: K8sObject[], options: RuleOptions): Violation[] {
  const out: Violation[] = [];
  const add = (o: K8sObject, rule: string, message: string) => out.push({ object: label(o), rule, message });
  const byKind = (kind: string) => objects.filter((o) => o.kind === kind);
  const find = (kind: string, name: string) => objects.find((o) => o.kind === kind && o.metadata.name === name);
  const external = new Set(options.externalSecrets ?? []);
  const margin = options.drainMarginSeconds ?? DEFAULT_DRAIN_MARGIN_SECONDS;
  const chatImages = new Map<string, string>();
  /** Where each chat container gets the settings that gateway, worker and migrate must agree on. */
  const shared: { object: K8sObject; origins: Map<string, string>; proc: AppProcess }[] = [];

  for (const o of objects.filter((x) => WORKLOADS.has(x.kind))) {
    if (LONG_RUNNING.has(o.kind) || o.kind === "Job") {
      const selector = obj(obj(obj(o["spec"])["selector"])["matchLabels"]);
      if (o.kind !== "Job" && !matches(selector, templateLabels(o))) add(o, "selector", "spec.selector.matchLabels must select the pod template's labels");
    }
    for (const pod of podSpecs(o)) {
      checkPod(o, pod, add);
      const volumes = new Set(arr(pod["volumes"]).map((v) => v["name"]));
      const sa = pod["serviceAccountName"];
      if (typeof sa === "string" && !find("ServiceAccount", sa)) add(o, "references", `serviceAccountName ${sa} is not rendered`);
      for (const c of containersOf(pod)) {
        const name = `container ${String(c["name"])}`;
        checkContainerSecurity(o, name, c, add);
        checkResources(o, name, c, add);
        checkImage(o, name, c, add);
        for (const m of arr(c["volumeMounts"])) if (!volumes.has(m["name"])) add(o, "references", `${name} mounts undeclared volume ${String(m["name"])}`);
        if (LONG_RUNNING.has(o.kind)) {
          if (!isObject(c["readinessProbe"])) add(o, "probes", `${name} has no readinessProbe`);
          if (!isObject(c["livenessProbe"])) add(o, "probes", `${name} has no livenessProbe`);
        }
        const proc = processOf(c["command"], options.processes);
        if (!proc) continue;
        chatImages.set(label(o), String(c["image"]));
        const { values: env, origins } = checkEnvironment(o, name, c, proc, objects, external, add);
        shared.push({ object: o, origins, proc });
        if (proc.name === "gateway" || proc.name === "worker") {
          const portVar = proc.name === "gateway" ? "PORT" : "CHAT_WORKER_HTTP_PORT";
          const port = Number(env.get(portVar) ?? proc.defaultOf(portVar));
          checkAppProbes(o, name, c, port, add);
        }
        if (proc.name === "gateway") {
          const drainMs = Number(env.get("CHAT_DRAIN_WINDOW_MS") ?? proc.defaultOf("CHAT_DRAIN_WINDOW_MS"));
          const preStop = preStopSeconds(c);
          const grace = typeof pod["terminationGracePeriodSeconds"] === "number" ? pod["terminationGracePeriodSeconds"] : 30;
          if (preStop === 0) add(o, "drain", `${name} has no preStop sleep: endpoints may still route new sockets to a draining pod`);
          if (grace <= preStop + drainMs / 1000 + margin) {
            add(o, "drain", `terminationGracePeriodSeconds ${grace} must exceed preStop ${preStop} s + drain window ${drainMs / 1000} s + ${margin} s`);
          }
        }
        if (proc.name === "worker") {
          const blockMs = Number(env.get("CHAT_WORKER_BLOCK_MS") ?? proc.defaultOf("CHAT_WORKER_BLOCK_MS") ?? 0);
          const grace = typeof pod["terminationGracePeriodSeconds"] === "number" ? pod["terminationGracePeriodSeconds"] : 30;
          if (grace <= blockMs / 1000 + margin) add(o, "drain", `terminationGracePeriodSeconds ${grace} leaves the worker no time to finish its batch`);
        }
      }
    }
  }
  if (new Set(chatImages.values()).size > 1) {
    for (const o of objects.filter((x) => chatImages.has(label(x)))) add(o, "image", `the chat processes must share one image, got ${[...new Set(chatImages.values())].join(", ")}`);
  }

  // A different prefix or backend on one side means messages that are never persisted or delivered;
  // a different partition count, a process that refuses to start.
  for (const variable of SHARED_SETTINGS) {
    const seen = shared.filter((x) => x.proc.reads.has(variable) && (x.proc.name !== "migrate" || variable === "DATABASE_URL"));
    const origin = (x: (typeof seen)[number]) => x.origins.get(variable) ?? `value ${JSON.stringify(x.proc.defaultOf(variable))} (default)`;
    const distinct = new Set(seen.map(origin));
    if (distinct.size > 1) for (const x of seen) add(x.object, "shared", `${variable} must be the same for every chat process, here ${origin(x)}`);
  }

  for (const s of byKind("Service")) {
    const selector = obj(obj(s["spec"])["selector"]);
    const targets = objects.filter((o) => LONG_RUNNING.has(o.kind) && matches(selector, templateLabels(o)));
    if (targets.length === 0) {
      add(s, "service", "selects no pods of a rendered workload");
      continue;
    }
    const ports = targets.flatMap((t) => podSpecs(t).flatMap((p) => containersOf(p).flatMap((c) => arr(c["ports"]))));
    for (const p of arr(obj(s["spec"])["ports"])) {
      const target = p["targetPort"] ?? p["port"];
      if (!ports.some((cp) => cp["name"] === target || cp["containerPort"] === target)) add(s, "service", `targetPort ${String(target)} is not a container port of the selected pods`);
    }
  }

  for (const h of byKind("HorizontalPodAutoscaler")) {
    const spec = obj(h["spec"]);
    const ref = obj(spec["scaleTargetRef"]);
    const target = find(String(ref["kind"]), String(ref["name"]));
    if (!target) {
      add(h, "hpa", `scaleTargetRef ${String(ref["kind"])}/${String(ref["name"])} is not rendered`);
      continue;
    }
    if (obj(target["spec"])["replicas"] !== undefined) add(h, "hpa", `${label(target)} sets spec.replicas, which every apply would reset under the autoscaler`);
    if (Number(spec["minReplicas"] ?? 1) < 2) add(h, "hpa", "minReplicas below 2 leaves no gateway to reconnect to while one drains");
    const usesCpu = arr(spec["metrics"]).some((m) => obj(obj(m["resource"]))["name"] === "cpu");
    const missingCpu = podSpecs(target).some((p) => containersOf(p).some((c) => obj(obj(c["resources"])["requests"])["cpu"] === undefined));
    if (usesCpu && missingCpu) add(h, "hpa", `a CPU target needs cpu requests on every container of ${label(target)}`);
  }

  for (const p of byKind("PodDisruptionBudget")) {
    const selector = obj(obj(obj(p["spec"])["selector"])["matchLabels"]);
    if (!objects.some((o) => LONG_RUNNING.has(o.kind) && matches(selector, templateLabels(o)))) add(p, "pdb", "selects no pods of a rendered workload");
  }
  return out;
}

function checkPod(o: K8sObject, pod: JsonObject, add: (o: K8sObject, rule: string, message: string) => void): void {
  const sc = obj(pod["securityContext"]);
  const containers = containersOf(pod);
  const everyContainer = (f: (c: JsonObject) => boolean) => containers.length > 0 && containers.every(f);
  if (sc["runAsNonRoot"] !== true && !everyContainer((c) => obj(c["securityContext"])["runAsNonRoot"] === true)) add(o, "pod-security", "runAsNonRoot must be true");
  if (sc["runAsUser"] === 0) add(o, "pod-security", "runAsUser must not be 0");
  if (obj(sc["seccompProfile"])["type"] !== "RuntimeDefault" && !everyContainer((c) => obj(obj(c["securityContext"])["seccompProfile"])["type"] === "RuntimeDefault")) {
    add(o, "pod-security", "seccompProfile.type must be RuntimeDefault");
  }
  if (pod["automountServiceAccountToken"] !== false) add(o, "pod-security", "automountServiceAccountToken must be false (no pod calls the Kubernetes API)");
  if (pod["enableServiceLinks"] !== false) add(o, "pod-security", "enableServiceLinks must be false (injected <SERVICE>_PORT variables can collide with settings)");
  for (const host of ["hostNetwork", "hostPID", "hostIPC"]) if (pod[host] === true) add(o, "pod-security", `${host} must not be set`);
}

function checkContainerSecurity(o: K8sObject, name: string, c: JsonObject, add: (o: K8sObject, rule: string, message: string) => void): void {
  const sc = obj(c["securityContext"]);
  if (sc["allowPrivilegeEscalation"] !== false) add(o, "container-security", `${name}: allowPrivilegeEscalation must be false`);
  if (sc["readOnlyRootFilesystem"] !== true) add(o, "container-security", `${name}: readOnlyRootFilesystem must be true`);
  if (sc["privileged"] === true) add(o, "container-security", `${name}: privileged must not be true`);
  if (sc["runAsUser"] === 0) add(o, "container-security", `${name}: runAsUser must not be 0`);
  const caps = obj(sc["capabilities"]);
  if (!(Array.isArray(caps["drop"]) && caps["drop"].includes("ALL"))) add(o, "container-security", `${name}: capabilities.drop must include ALL`);
  if (Array.isArray(caps["add"]) && caps["add"].length > 0) add(o, "container-security", `${name}: capabilities.add must be empty`);
}

function checkResources(o: K8sObject, name: string, c: JsonObject, add: (o: K8sObject, rule: string, message: string) => void): void {
  const resources = obj(c["resources"]);
  const requests = obj(resources["requests"]);
  if (requests["cpu"] === undefined || requests["memory"] === undefined) add(o, "resources", `${name}: needs cpu and memory requests`);
  if (obj(resources["limits"])["memory"] === undefined) add(o, "resources", `${name}: needs a memory limit`);
}

function checkImage(o: K8sObject, name: string, c: JsonObject, add: (o: K8sObject, rule: string, message: string) => void): void {
  const ref = parseImage(String(c["image"] ?? ""));
  if (!ref.name) add(o, "image", `${name}: no image`);
  else if (!ref.tag && !ref.digest) add(o, "image", `${name}: image ${ref.name} needs a tag or a digest`);
  else if (ref.tag === "latest") add(o, "image", `${name}: image tag latest is not reproducible`);
}

function checkAppProbes(o: K8sObject, name: string, c: JsonObject, port: number, add: (o: K8sObject, rule: string, message: string) => void): void {
  const ports = arr(c["ports"]);
  if (!ports.some((p) => p["containerPort"] === port)) add(o, "probes", `${name}: the process listens on ${port}, which is not a containerPort`);
  for (const [probe, path] of [
    ["readinessProbe", "/readyz"],
    ["livenessProbe", "/healthz"],
  ] as const) {
    const get = obj(obj(c[probe])["httpGet"]);
    if (!isObject(c[probe])) continue; // reported as missing
    if (get["path"] !== path) {
      add(o, "probes", `${name}: ${probe} must be an httpGet of ${path}`);
      continue;
    }
    const target = ports.find((p) => p["name"] === get["port"] || p["containerPort"] === get["port"]);
    if (target?.["containerPort"] !== port) add(o, "probes", `${name}: ${probe} must probe port ${port}, where the process listens`);
  }
}

/** Checks a chat container's variables; returns the literal values it will see (ConfigMaps and env). */
function checkEnvironment(
  o: K8sObject,
  name: string,
  c: JsonObject,
  proc: AppProcess,
  objects: K8sObject[],
  external: Set<string>,
  add: (o: K8sObject, rule: string, message: string) => void,
): { values: Map<string, string>; origins: Map<string, string> } {
  const values = new Map<string, string>();
  const origins = new Map<string, string>();
  const defined = new Set<string>();
  const find = (kind: string, n: string) => objects.find((x) => x.kind === kind && x.metadata.name === n);
  const use = (variable: string, value: string | undefined, where: string) => {
    if (!proc.reads.has(variable)) add(o, "env", `${name}: ${variable} (${where}) is not read by the ${proc.name}`);
    defined.add(variable);
    origins.set(variable, value === undefined ? where : `value ${JSON.stringify(value)}`);
    if (value === undefined) return;
    values.set(variable, value);
    try {
      proc.parse(variable, value);
    } catch (err) {
      add(o, "env", `${name}: ${variable}=${JSON.stringify(value)} (${where}) is invalid: ${(err as Error).message}`);
    }
  };
  for (const from of arr(c["envFrom"])) {
    const cmName = obj(from["configMapRef"])["name"];
    const secretName = obj(from["secretRef"])["name"];
    if (typeof cmName === "string") {
      const cm = find("ConfigMap", cmName);
      if (!cm) add(o, "references", `${name}: envFrom ConfigMap ${cmName} is not rendered`);
      for (const [k, v] of Object.entries(obj(cm?.["data"]))) use(k, String(v), `ConfigMap ${cmName}`);
    }
    if (typeof secretName === "string") {
      const secret = find("Secret", secretName);
      if (!secret) add(o, "env", `${name}: envFrom Secret ${secretName} hides which variables it sets; reference keys with secretKeyRef`);
      for (const k of Object.keys({ ...obj(secret?.["data"]), ...obj(secret?.["stringData"]) })) use(k, undefined, `Secret ${secretName}`);
    }
  }
  for (const e of arr(c["env"])) {
    const variable = String(e["name"]);
    const from = obj(e["valueFrom"]);
    const secretRef = obj(from["secretKeyRef"]);
    const cmRef = obj(from["configMapKeyRef"]);
    if (typeof secretRef["name"] === "string") {
      const secret = find("Secret", secretRef["name"]);
      if (!secret && !external.has(secretRef["name"])) add(o, "references", `${name}: ${variable} reads Secret ${secretRef["name"]}, which is neither rendered nor a documented external Secret`);
      const keys = Object.keys({ ...obj(secret?.["data"]), ...obj(secret?.["stringData"]) });
      if (secret && !keys.includes(String(secretRef["key"]))) add(o, "references", `${name}: Secret ${secretRef["name"]} has no key ${String(secretRef["key"])}`);
      use(variable, undefined, `Secret ${secretRef["name"]} key ${String(secretRef["key"])}`);
    } else if (typeof cmRef["name"] === "string") {
      const value = obj(find("ConfigMap", cmRef["name"])?.["data"])[String(cmRef["key"])];
      if (value === undefined) add(o, "references", `${name}: ConfigMap ${cmRef["name"]} key ${String(cmRef["key"])} is not rendered`);
      use(variable, value === undefined ? undefined : String(value), `ConfigMap ${cmRef["name"]}`);
    } else {
      use(variable, e["value"] === undefined ? undefined : String(e["value"]), "env");
    }
  }
  for (const variable of proc.required) if (!defined.has(variable)) add(o, "env", `${name}: the ${proc.name} needs ${variable}`);
  return { values, origins };
}
