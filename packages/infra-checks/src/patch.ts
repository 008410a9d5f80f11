/**
 * The two patch kinds kustomize applies: strategic merge (for the built-in kinds we use) and JSON 6902.
 * Only what infra/k8s needs; kustomize-render.test.ts compares the result with `kubectl kustomize`.
 */

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type JsonObject = { [key: string]: Json };

export function isObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * Merge keys of the associative lists of the Kubernetes API that a patch may touch, by field name;
 * `ports` depends on whether it is a Service's or a container's. Lists not named here are replaced.
 */
function mergeKey(field: string, kind: string, path: string[]): string | undefined {
  switch (field) {
    case "containers":
    case "initContainers":
    case "env":
    case "volumes":
    case "imagePullSecrets":
      return "name";
    case "volumeMounts":
    case "volumeDevices":
      return "mountPath";
    case "ports":
      return kind === "Service" && path.length === 1 && path[0] === "spec" ? "port" : "containerPort";
    case "topologySpreadConstraints":
      return "topologyKey";
    default:
      return undefined;
  }
}

/** Strategic merge patch: objects merge, null deletes, associative lists merge by key (patch order first). */
export function strategicMerge(target: Json, patch: Json, kind: string, path: string[] = []): Json {
  if (!isObject(patch) || !isObject(target)) return structuredClone(patch);
  if (patch["$patch"] === "replace") {
    const { $patch: _, ...rest } = patch;
    return structuredClone(rest);
  }
  const out: JsonObject = structuredClone(target);
  for (const [key, value] of Object.entries(patch)) {
    if (key.startsWith("$")) throw new Error(`unsupported strategic-merge directive ${key} at ${[...path, key].join(".")}`);
    if (value === null) {
      delete out[key];
      continue;
    }
    const current = out[key];
    if (Array.isArray(value) && Array.isArray(current)) {
      const mk = mergeKey(key, kind, path);
      out[key] = mk ? mergeList(current, value, mk, kind, [...path, key]) : structuredClone(value);
    } else if (isObject(value) && isObject(current)) {
      out[key] = strategicMerge(current, value, kind, [...path, key]);
    } else {
      out[key] = structuredClone(value);
    }
  }
  return out;
}

function mergeList(target: Json[], patch: Json[], key: string, kind: string, path: string[]): Json[] {
  const keyOf = (item: Json) => (isObject(item) ? item[key] : undefined);
  const patchKeys = new Set(patch.map(keyOf));
  const merged: Json[] = [];
  for (const item of patch) {
    if (isObject(item) && item["$patch"] === "delete") continue;
    const existing = target.find((t) => keyOf(t) !== undefined && keyOf(t) === keyOf(item));
    merged.push(existing === undefined ? structuredClone(item) : strategicMerge(existing, item, kind, path));
  }
  const deleted = new Set(patch.filter((p) => isObject(p) && p["$patch"] === "delete").map(keyOf));
  for (const item of target) {
    if (!patchKeys.has(keyOf(item)) && !deleted.has(keyOf(item))) merged.push(structuredClone(item));
  }
  return merged;
}

export interface JsonPatchOperation {
  op: "add" | "remove" | "replace" | "test" | "move" | "copy";
  path: string;
  value?: Json;
  from?: string;
}

function pointer(path: string): string[] {
  if (path === "") return [];
  if (!path.startsWith("/")) throw new Error(`JSON pointer must start with /: ${path}`);
  return path
    .slice(1)
    .split("/")
    .map((s) => s.replaceAll("~1", "/").replaceAll("~0", "~"));
}

function parentOf(doc: Json, tokens: string[], path: string): { parent: JsonObject | Json[]; last: string } {
  let node: Json = doc;
  for (const t of tokens.slice(0, -1)) {
    if (Array.isArray(node)) node = node[Number(t)] as Json;
    else if (isObject(node)) node = node[t] as Json;
    else node = undefined as unknown as Json;
    if (node === undefined) throw new Error(`JSON patch path ${path} does not exist`);
  }
  if (!Array.isArray(node) && !isObject(node)) throw new Error(`JSON patch path ${path} has no container`);
  return { parent: node, last: tokens[tokens.length - 1]! };
}

function getAt(doc: Json, path: string): Json {
  let node: Json = doc;
  for (const t of pointer(path)) {
    node = (Array.isArray(node) ? node[Number(t)] : isObject(node) ? node[t] : undefined) as Json;
    if (node === undefined) throw new Error(`JSON patch path ${path} does not exist`);
  }
  return node;
}

/** RFC 6902, applied to a copy. */
export function applyJsonPatch(doc: Json, ops: JsonPatchOperation[]): Json {
  const out = structuredClone(doc);
  for (const op of ops) {
    if (op.op === "test") {
      if (JSON.stringify(getAt(out, op.path)) !== JSON.stringify(op.value)) throw new Error(`JSON patch test failed at ${op.path}`);
    } else if (op.op === "move" || op.op === "copy") {
      const value = structuredClone(getAt(out, op.from ?? ""));
      if (op.op === "move") mutate(out, "remove", op.from ?? "", null);
      mutate(out, "add", op.path, value);
    } else {
      mutate(out, op.op, op.path, structuredClone(op.value ?? null));
    }
  }
  return out;
}

function mutate(doc: Json, op: "add" | "remove" | "replace", path: string, value: Json): void {
  const { parent, last } = parentOf(doc, pointer(path), path);
  if (Array.isArray(parent)) {
    const index = last === "-" && op === "add" ? parent.length : Number(last);
    if (!Number.isInteger(index) || index < 0 || index > parent.length - (op === "add" ? 0 : 1)) {
      throw new Error(`JSON patch index ${path} out of range`);
    }
    if (op === "add") parent.splice(index, 0, value);
    else if (op === "remove") parent.splice(index, 1);
    else parent[index] = value;
  } else {
    if (op !== "add" && !(last in parent)) throw new Error(`JSON patch path ${path} does not exist`);
    if (op === "remove") delete parent[last];
    else parent[last] = value;
  }
}
