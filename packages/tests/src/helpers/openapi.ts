import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Ajv2020, type ValidateFunction } from "ajv/dist/2020.js";
import addFormatsModule from "ajv-formats";
import { parse as parseYaml } from "yaml";
import { REPO_ROOT } from "./env.js";

// ---------------------------------------------------------------------------------------------
// The contract: docs/openapi.yaml. Every JSON response of these tests is validated against the
// schema the spec declares for its path, method and status (a status the spec does not declare
// for that operation fails the test).
// ---------------------------------------------------------------------------------------------

type Json = Record<string, unknown>;
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Any = any;

export const spec = parseYaml(readFileSync(join(REPO_ROOT, "docs/openapi.yaml"), "utf8")) as Any;
const addFormats = ((addFormatsModule as Any).default ?? addFormatsModule) as (ajv: Ajv2020) => void;
// Responses are validated leniently about unknown keywords (a prose typo in the spec must not hide a
// wrong response); the first test compiles the spec strictly and fails on every such defect.
export const ajv = new Ajv2020({ strict: false, allErrors: true, allowUnionTypes: true });
addFormats(ajv);
export const strictAjv = new Ajv2020({ strict: true, allErrors: true, allowUnionTypes: true });
addFormats(strictAjv);

export function resolveRef(ref: string): Any {
  if (!ref.startsWith("#/")) throw new Error(`only local $refs are supported, got ${ref}`);
  const target = ref
    .slice(2)
    .split("/")
    .map((k) => k.replace(/~1/g, "/").replace(/~0/g, "~"))
    .reduce<Any>((node, key) => (node === undefined ? undefined : node[key]), spec);
  if (target === undefined) throw new Error(`unresolvable $ref ${ref}`);
  return target;
}

/** Replaces every `$ref` to components by the component itself (the spec has no cycles; guarded anyway). */
function inline(node: Any, depth = 0): Any {
  if (depth > 50) throw new Error("$ref cycle in docs/openapi.yaml");
  if (Array.isArray(node)) return node.map((n) => inline(n, depth + 1));
  if (node === null || typeof node !== "object") return node;
  if (typeof node.$ref === "string") {
    const { $ref, ...siblings } = node as { $ref: string } & Json;
    const target = inline(resolveRef($ref), depth + 1);
    const constraining = Object.keys(siblings).filter((k) => k !== "description" && k !== "summary");
    return constraining.length === 0 ? target : { allOf: [target], ...inline(siblings, depth + 1) };
  }
  return Object.fromEntries(Object.entries(node).map(([k, v]) => [k, inline(v, depth + 1)]));
}

const validators = new Map<string, ValidateFunction>();
export function compiled(key: string, schema: () => Any): ValidateFunction {
  let v = validators.get(key);
  if (!v) validators.set(key, (v = ajv.compile(schema())));
  return v;
}

/** The spec path template an actual request path falls under (trailing slash ignored), if any. */
function specPath(pathname: string): string | undefined {
  const strip = (p: string) => (p.length > 1 ? p.replace(/\/$/, "") : p);
  const actual = strip(pathname);
  return Object.keys(spec.paths).find((template) => {
    const re = new RegExp(`^${strip(template).replace(/\{[^}]+\}/g, "[^/]+")}$`);
    return re.test(actual);
  });
}

/** The JSON schema of a response: spec path + method + status, $refs resolved here. */
export function responseSchema(template: string, method: string, status: number): Any {
  const op = spec.paths[template]?.[method.toLowerCase()];
  if (!op) throw new Error(`docs/openapi.yaml has no ${method} ${template}`);
  let response = op.responses?.[String(status)];
  if (!response) throw new Error(`docs/openapi.yaml declares no ${status} response for ${method} ${template}`);
  if (typeof response.$ref === "string") response = resolveRef(response.$ref);
  const schema = response.content?.["application/json"]?.schema;
  if (!schema) throw new Error(`docs/openapi.yaml declares no JSON body for ${status} of ${method} ${template}`);
  return inline(schema);
}

/** Checks one JSON body against the spec; a route outside the spec must answer with the spec's Error object. */
export function checkAgainstSpec(method: string, pathWithQuery: string, status: number, body: unknown): void {
  const pathname = pathWithQuery.split("?")[0]!;
  const template = specPath(pathname);
  const validate = template
    ? compiled(`${method} ${template} ${status}`, () => responseSchema(template, method, status))
    : compiled("Error", () => inline({ $ref: "#/components/schemas/Error" }));
  if (!validate(body)) {
    throw new Error(
      `${method} ${pathWithQuery} -> ${status} does not match docs/openapi.yaml (${template ?? "Error"}): ` +
        `${ajv.errorsText(validate.errors)}; body ${JSON.stringify(body).slice(0, 500)}`,
    );
  }
}

