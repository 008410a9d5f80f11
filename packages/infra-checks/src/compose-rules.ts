import { parse } from "yaml";
import { processOf, type AppProcess } from "./app-settings.js";
import { isObject, type Json, type JsonObject } from "./patch.js";

/**
 * Structural rules for infra/docker/compose.yaml beyond the compose-spec schema: the services of a
 * local cluster, health checks on the ports the processes listen on, start order, one image, the
 * hardening of the Kubernetes manifests, and only variables the processes read.
 */

export interface ComposeViolation {
  service: string;
  message: string;
}

const obj = (v: Json | undefined): JsonObject => (isObject(v) ? v : {});

/** Compose's `${VAR:-default}` resolved to its default; undefined when a variable has none (`${VAR}`, `${VAR:?error}`). */
export function interpolationDefault(value: string): string | undefined {
  let unresolved = false;
  const out = value.replace(/\$\{\w+(?:(:?-)([^}]*)|:?\?[^}]*)?\}/g, (_whole, dash: string | undefined, fallback: string | undefined) => {
    if (dash !== undefined) return fallback ?? "";
    unresolved = true;
    return "";
  });
  return unresolved ? undefined : out;
}

export function parseCompose(text: string): JsonObject {
  const doc = parse(text, { merge: true, uniqueKeys: true }) as Json;
  if (!isObject(doc)) throw new Error("compose file is not a mapping");
  return doc;
}

function environment(service: JsonObject): Map<string, string> {
  const env = service["environment"];
  const out = new Map<string, string>();
  if (Array.isArray(env)) {
    for (const entry of env) {
      const [k, ...v] = String(entry).split("=");
      out.set(k!, v.join("="));
    }
  } else {
    for (const [k, v] of Object.entries(obj(env))) out.set(k, v === null ? "" : String(v));
  }
  return out;
}

function seconds(duration: Json | undefined): number | undefined {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)$/.exec(String(duration ?? ""));
  if (!m) return undefined;
  return Number(m[1]) * (m[2] === "ms" ? 0.001 : m[2] === "m" ? 60 : 1);
}

export interface ComposeOptions {
  processes: AppProcess[];
  /** Services that must exist, with the process each one runs (undefined: a backend image). */
  expected: Record<string, AppProcess["name"] | undefined>;
  drainMarginSeconds: number;
}

export function checkCompose(compose: JsonObject, options: ComposeOptions): ComposeViolation[] {
  const out: ComposeViolation[] = [];
  const services = obj(compose["services"]);
  const add = (service: string, message: string) => out.push({ service, message });
  if ("version" in compose) add("(top level)", "the version field is obsolete in the compose specification");

  for (const [name, proc] of Object.entries(options.expected)) {
    if (!isObject(services[name])) add(name, "missing");
    else if (proc && processOf(obj(services[name])["command"], options.processes)?.name !== proc) add(name, `must run the ${proc} (command: node <its dist script>)`);
  }

  const chatImages = new Set<string>();
  const shared = new Map<string, Map<string, string>>();
  for (const [name, value] of Object.entries(services)) {
    const service = obj(value);
    const proc = processOf(service["command"], options.processes);
    const image = interpolationDefault(String(service["image"] ?? ""));
    if (!image || !/:[\w.-]+$/.test(image) || image.endsWith(":latest")) add(name, `image ${String(service["image"])} needs a version tag (not latest)`);
    const healthcheck = obj(service["healthcheck"]);
    if (!proc || proc.name !== "migrate") {
      if (!Array.isArray(healthcheck["test"])) add(name, "needs a healthcheck");
    }
    for (const [dep, cond] of Object.entries(obj(service["depends_on"]))) {
      if (!isObject(services[dep])) add(name, `depends on unknown service ${dep}`);
      const condition = obj(cond)["condition"];
      const wanted = obj(services[dep])["command"] && processOf(obj(services[dep])["command"], options.processes)?.name === "migrate" ? "service_completed_successfully" : "service_healthy";
      if (condition !== wanted) add(name, `depends_on ${dep} must wait for ${wanted}`);
    }
    for (const port of Array.isArray(service["ports"]) ? service["ports"] : []) {
      if (!String(port).startsWith("127.0.0.1:")) add(name, `port ${String(port)} must bind to 127.0.0.1 (a development cluster with a development database)`);
    }
    if (!proc) continue;

    chatImages.add(String(service["image"]));
    if (service["read_only"] !== true) add(name, "read_only must be true");
    if (!(Array.isArray(service["cap_drop"]) && service["cap_drop"].includes("ALL"))) add(name, "cap_drop must include ALL");
    if (!(Array.isArray(service["security_opt"]) && service["security_opt"].some((o) => /^no-new-privileges(:true)?$/.test(String(o))))) add(name, "security_opt must include no-new-privileges:true");
    if (!/^[1-9]\d*(:\d+)?$/.test(String(service["user"] ?? ""))) add(name, "user must be a numeric non-root uid");

    const env = environment(service);
    for (const variable of ["REDIS_URL", "DATABASE_URL", "CHAT_REDIS_PREFIX"]) {
      if (proc.name === "migrate" && variable !== "DATABASE_URL") continue;
      const value = env.get(variable) ?? proc.defaultOf(variable) ?? "";
      shared.set(variable, (shared.get(variable) ?? new Map()).set(name, value));
    }
    for (const [variable, raw] of env) {
      if (!proc.reads.has(variable)) add(name, `${variable} is not read by the ${proc.name}`);
      const value = raw.includes("${") ? interpolationDefault(raw) : raw;
      if (value === undefined) continue;
      try {
        proc.parse(variable, value);
      } catch (err) {
        add(name, `${variable}=${JSON.stringify(value)} is invalid: ${(err as Error).message}`);
      }
    }
    for (const variable of proc.required) if (!env.has(variable)) add(name, `the ${proc.name} needs ${variable}`);
    const secret = env.get("CHAT_JWT_SECRET");
    if (secret !== undefined && !/^\$\{CHAT_JWT_SECRET:\?[^}]+\}$/.test(secret)) add(name, "CHAT_JWT_SECRET must come from the environment and be required: ${CHAT_JWT_SECRET:?message}");

    if (proc.name === "gateway" || proc.name === "worker") {
      const portVar = proc.name === "gateway" ? "PORT" : "CHAT_WORKER_HTTP_PORT";
      const port = env.get(portVar) ?? proc.defaultOf(portVar);
      const test = (Array.isArray(healthcheck["test"]) ? healthcheck["test"] : []).join(" ");
      if (!test.includes(`:${port}/readyz`)) add(name, `the healthcheck must request /readyz on port ${port}, where the ${proc.name} listens`);
    }
    if (proc.name === "gateway") {
      const drainSeconds = Number(env.get("CHAT_DRAIN_WINDOW_MS") ?? proc.defaultOf("CHAT_DRAIN_WINDOW_MS")) / 1000;
      const grace = seconds(service["stop_grace_period"]) ?? 10;
      if (grace <= drainSeconds + options.drainMarginSeconds) add(name, `stop_grace_period ${grace} s must exceed the drain window ${drainSeconds} s + ${options.drainMarginSeconds} s`);
    }
  }
  if (chatImages.size > 1) add("(all)", `the chat services must share one image, got ${[...chatImages].join(", ")}`);
  for (const [variable, byService] of shared) {
    if (new Set(byService.values()).size > 1) add("(all)", `${variable} differs between the chat services: ${JSON.stringify(Object.fromEntries(byService))}`);
  }
  return out;
}
