import { existsSync, readFileSync, statSync } from "node:fs";
import { join, resolve } from "node:path";
import { parseAllDocuments } from "yaml";
import { applyJsonPatch, isObject, strategicMerge, type Json, type JsonObject, type JsonPatchOperation } from "./patch.js";

/**
 * An in-process `kustomize build` for the subset infra/k8s uses: resources (files and directories),
 * components, namespace, images, replicas and patches (strategic merge or JSON 6902, from a file or
 * inline, with a kind/name target). Any other field is an error rather than silently ignored, and
 * kustomize-render.test.ts compares the output with `kubectl kustomize` where kubectl exists.
 */

export interface K8sObject extends JsonObject {
  apiVersion: string;
  kind: string;
  metadata: JsonObject & { name: string; namespace?: string; labels?: Record<string, string> };
}

const SUPPORTED_FIELDS = new Set(["apiVersion", "kind", "resources", "components", "namespace", "images", "replicas", "patches"]);

/** Kinds whose spec.replicas kustomize's replicas transformer sets. */
const SCALABLE = new Set(["Deployment", "ReplicaSet", "StatefulSet", "ReplicationController"]);

/** Kinds that have no namespace (only those we might meet). */
const CLUSTER_SCOPED = new Set([
  "Namespace",
  "ClusterRole",
  "ClusterRoleBinding",
  "CustomResourceDefinition",
  "PriorityClass",
  "StorageClass",
  "PersistentVolume",
  "ValidatingWebhookConfiguration",
  "MutatingWebhookConfiguration",
]);

/** Parses every YAML document of a text; YAML errors and warnings are thrown, empty documents skipped. */
export function parseYamlDocuments(text: string, source: string): Json[] {
  const docs = parseAllDocuments(text, { prettyErrors: true, uniqueKeys: true });
  if (!Array.isArray(docs)) throw new Error(`${source}: not a YAML stream`);
  const out: Json[] = [];
  for (const doc of docs) {
    const problems = [...doc.errors, ...doc.warnings];
    if (problems.length > 0) throw new Error(`${source}: ${problems.map((e) => e.message).join("; ")}`);
    const value = doc.toJS() as Json;
    if (value !== null && value !== undefined) out.push(value);
  }
  return out;
}

function asObject(value: Json, source: string): K8sObject {
  if (!isObject(value) || typeof value["apiVersion"] !== "string" || typeof value["kind"] !== "string") {
    throw new Error(`${source}: a document without apiVersion and kind`);
  }
  const metadata = value["metadata"];
  if (!isObject(metadata) || typeof metadata["name"] !== "string") throw new Error(`${source}: ${value["kind"]} without metadata.name`);
  return value as K8sObject;
}

export const objectId = (o: K8sObject): string => `${o.kind}/${o.metadata.namespace ? `${o.metadata.namespace}/` : ""}${o.metadata.name}`;

export function readKustomization(dir: string): JsonObject {
  const file = ["kustomization.yaml", "kustomization.yml", "Kustomization"].map((f) => join(dir, f)).find((f) => existsSync(f));
  if (!file) throw new Error(`${dir}: no kustomization.yaml`);
  const [doc] = parseYamlDocuments(readFileSync(file, "utf8"), file);
  if (!isObject(doc)) throw new Error(`${file}: not a mapping`);
  return doc;
}

/** Renders the kustomization in `dir` (or a kustomization given as an object rooted at `dir`). */
export function render(dir: string, kustomization: JsonObject = readKustomization(dir)): K8sObject[] {
  const where = join(dir, "kustomization.yaml");
  for (const key of Object.keys(kustomization)) {
    if (!SUPPORTED_FIELDS.has(key)) throw new Error(`${where}: field "${key}" is not supported by the in-process renderer`);
  }
  let objects: K8sObject[] = [];
  for (const entry of list(kustomization["resources"], where, "resources")) {
    const path = resolve(dir, entry);
    if (statSync(path).isDirectory()) {
      const child = readKustomization(path);
      if (child["kind"] === "Component") throw new Error(`${where}: ${entry} is a Component, list it under components`);
      objects.push(...render(path, child));
    } else {
      objects.push(...parseYamlDocuments(readFileSync(path, "utf8"), path).map((d) => asObject(d, path)));
    }
  }
  const seen = new Set<string>();
  for (const o of objects) {
    if (seen.has(objectId(o))) throw new Error(`${where}: ${objectId(o)} is defined twice`);
    seen.add(objectId(o));
  }
  for (const entry of list(kustomization["components"], where, "components")) {
    const path = resolve(dir, entry);
    const component = readKustomization(path);
    if (component["kind"] !== "Component") throw new Error(`${path}: a component must have kind: Component`);
    objects = applyComponent(path, component, objects);
  }
  return transform(dir, kustomization, objects);
}

function applyComponent(dir: string, component: JsonObject, objects: K8sObject[]): K8sObject[] {
  const { resources, ...rest } = component;
  const added = resources === undefined ? [] : render(dir, { resources });
  return transform(dir, rest, [...objects, ...added]);
}

function list(value: Json | undefined, where: string, field: string): string[] {
  if (value === undefined) return [];
  if (!Array.isArray(value) || value.some((v) => typeof v !== "string")) throw new Error(`${where}: ${field} must be a list of paths`);
  return value as string[];
}

/** The kustomization's own transformers, in kustomize's order: patches, namespace, images, replicas. */
function transform(dir: string, k: JsonObject, input: K8sObject[]): K8sObject[] {
  const where = join(dir, "kustomization.yaml");
  let objects = input;
  for (const p of (k["patches"] as Json[] | undefined) ?? []) objects = applyPatch(dir, p, objects, where);
  if (typeof k["namespace"] === "string") {
    const ns = k["namespace"];
    objects = objects.map((o) => {
      const copy = structuredClone(o);
      if (o.kind === "Namespace") copy.metadata.name = ns;
      else if (!CLUSTER_SCOPED.has(o.kind)) copy.metadata.namespace = ns;
      return copy;
    });
  }
  for (const image of (k["images"] as Json[] | undefined) ?? []) objects = objects.map((o) => setImage(o, image, where));
  for (const r of (k["replicas"] as Json[] | undefined) ?? []) {
    if (!isObject(r) || typeof r["name"] !== "string" || typeof r["count"] !== "number") throw new Error(`${where}: replicas entries need name and count`);
    const matches = objects.filter((o) => o.metadata.name === r["name"] && SCALABLE.has(o.kind));
    if (matches.length === 0) throw new Error(`${where}: replicas names ${r["name"]}, which is not rendered`);
    for (const o of matches) (o["spec"] as JsonObject)["replicas"] = r["count"];
  }
  return objects;
}

function applyPatch(dir: string, p: Json, objects: K8sObject[], where: string): K8sObject[] {
  if (!isObject(p)) throw new Error(`${where}: a patch must be a mapping`);
  for (const key of Object.keys(p)) if (!["path", "patch", "target"].includes(key)) throw new Error(`${where}: patch field ${key} is not supported`);
  const source = typeof p["path"] === "string" ? resolve(dir, p["path"]) : `${where} (inline patch)`;
  const text = typeof p["path"] === "string" ? readFileSync(source, "utf8") : typeof p["patch"] === "string" ? p["patch"] : undefined;
  if (text === undefined) throw new Error(`${where}: a patch needs path or patch`);
  const docs = parseYamlDocuments(text, source);
  if (docs.length !== 1) throw new Error(`${source}: one patch per file`);
  const body = docs[0]!;
  const target = p["target"];
  if (target !== undefined && !isObject(target)) throw new Error(`${where}: target must be a mapping`);
  for (const key of Object.keys(target ?? {})) if (!["kind", "name"].includes(key)) throw new Error(`${where}: target field ${key} is not supported`);
  const selector = target ?? (isObject(body) && isObject(body["metadata"]) ? { kind: body["kind"] ?? null, name: body["metadata"]["name"] ?? null } : {});
  const selected = (o: K8sObject) =>
    (selector["kind"] === undefined || selector["kind"] === o.kind) && (selector["name"] === undefined || selector["name"] === o.metadata.name);
  if (!objects.some(selected)) throw new Error(`${source}: the patch matches no object (${JSON.stringify(selector)})`);
  return objects.map((o) => {
    if (!selected(o)) return o;
    if (Array.isArray(body)) return applyJsonPatch(o, body as unknown as JsonPatchOperation[]) as K8sObject;
    if (!isObject(body)) throw new Error(`${source}: a strategic merge patch must be a mapping`);
    return strategicMerge(o, body, o.kind) as K8sObject;
  });
}

/** Every pod spec of a workload object (Deployment, StatefulSet, DaemonSet, Job, CronJob, Pod). */
export function podSpecs(o: K8sObject): JsonObject[] {
  const spec = o["spec"];
  if (!isObject(spec)) return [];
  if (o.kind === "Pod") return [spec];
  if (o.kind === "CronJob") {
    const jt = spec["jobTemplate"];
    const t = isObject(jt) && isObject(jt["spec"]) ? jt["spec"]["template"] : undefined;
    return isObject(t) && isObject(t["spec"]) ? [t["spec"]] : [];
  }
  const template = spec["template"];
  return isObject(template) && isObject(template["spec"]) ? [template["spec"]] : [];
}

export function containersOf(podSpec: JsonObject): JsonObject[] {
  return [...((podSpec["initContainers"] as JsonObject[] | undefined) ?? []), ...((podSpec["containers"] as JsonObject[] | undefined) ?? [])];
}

/** kustomize's `images` transformer: matches the image name without tag or digest. */
function setImage(o: K8sObject, image: Json, where: string): K8sObject {
  if (!isObject(image) || typeof image["name"] !== "string") throw new Error(`${where}: images entries need a name`);
  const copy = structuredClone(o);
  for (const podSpec of podSpecs(copy)) {
    for (const c of containersOf(podSpec)) {
      const ref = parseImage(String(c["image"] ?? ""));
      if (ref.name !== image["name"]) continue;
      const name = typeof image["newName"] === "string" ? image["newName"] : ref.name;
      if (typeof image["digest"] === "string") c["image"] = `${name}@${image["digest"]}`;
      else if (typeof image["newTag"] === "string") c["image"] = `${name}:${image["newTag"]}`;
      else c["image"] = `${name}${ref.tag ? `:${ref.tag}` : ""}${ref.digest ? `@${ref.digest}` : ""}`;
    }
  }
  return copy;
}

export function parseImage(image: string): { name: string; tag?: string; digest?: string } {
  const [withTag, digest] = image.split("@") as [string, string | undefined];
  const slash = withTag.lastIndexOf("/");
  const colon = withTag.lastIndexOf(":");
  const hasTag = colon > slash;
  return {
    name: hasTag ? withTag.slice(0, colon) : withTag,
    ...(hasTag ? { tag: withTag.slice(colon + 1) } : {}),
    ...(digest ? { digest } : {}),
  };
}
