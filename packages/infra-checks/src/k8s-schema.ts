import { fileURLToPath } from "node:url";
import ts from "typescript";
import type { K8sObject } from "./kustomize.js";

/**
 * Validates objects against the Kubernetes API schemas shipped by the kubernetes-models packages,
 * offline, twice: their compiled JSON-schema validators (types, required fields, formats), and a
 * TypeScript compile of each object against the same package's interface, whose excess-property
 * check rejects unknown fields (a misspelt `readinesProbe` passes the JSON schemas, not this).
 */

/** The npm package that models an apiVersion: the core groups, or a CRD package for the optional components. */
function modelPackage(apiVersion: string): string {
  return apiVersion.startsWith("monitoring.coreos.com/") ? "@kubernetes-models/prometheus-operator" : "kubernetes-models";
}

export const modelModule = (o: Pick<K8sObject, "apiVersion" | "kind">): string => `${modelPackage(o.apiVersion)}/${o.apiVersion}/${o.kind}`;

export interface SchemaProblem {
  object: string;
  message: string;
}

const label = (o: K8sObject) => `${o.kind}/${o.metadata.name}`;

/** JSON-schema validation with the package's validators; an unknown apiVersion/kind is a problem too. */
export async function validateWithModels(objects: K8sObject[]): Promise<SchemaProblem[]> {
  const problems: SchemaProblem[] = [];
  for (const o of objects) {
    let Model: new (data: unknown) => { validate(): void };
    try {
      const mod = (await import(modelModule(o))) as Record<string, new (data: unknown) => { validate(): void }>;
      Model = mod[o.kind]!;
      if (typeof Model !== "function") throw new Error("no model class");
    } catch {
      problems.push({ object: label(o), message: `no schema for ${o.apiVersion} ${o.kind}` });
      continue;
    }
    try {
      new Model(o).validate();
    } catch (err) {
      const errors = (err as { errors?: { instancePath: string; message?: string }[] }).errors;
      for (const e of errors ?? [{ instancePath: "", message: (err as Error).message }]) {
        problems.push({ object: label(o), message: `${e.instancePath || "/"} ${e.message ?? ""}`.trim() });
      }
    }
  }
  return problems;
}

const here = fileURLToPath(new URL(".", import.meta.url));

/** Type-checks every object literal against its model interface (`I<Kind>`); reports unknown fields and wrong types. */
export function typeCheckObjects(objects: K8sObject[]): SchemaProblem[] {
  const virtual = `${here}__manifests_check__.ts`;
  const lines: string[] = [];
  const owners: { start: number; object: string }[] = [];
  // An apiVersion/kind without a model fails here as "Cannot find module" (and in validateWithModels).
  objects.forEach((o, i) => lines.push(`import type { I${o.kind} as T${i} } from "${modelModule(o)}";`));
  objects.forEach((o, i) => {
    owners.push({ start: lines.length, object: label(o) });
    const body = JSON.stringify(o, null, 2).split("\n");
    lines.push(`export const o${i}: T${i} = ${body[0]}`, ...body.slice(1));
    lines[lines.length - 1] += ";";
  });
  const source = lines.join("\n");
  const options: ts.CompilerOptions = {
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    types: [],
  };
  const host = ts.createCompilerHost(options);
  const getSourceFile = host.getSourceFile.bind(host);
  host.getSourceFile = (name, languageVersion, ...rest) =>
    name === virtual ? ts.createSourceFile(name, source, languageVersion) : getSourceFile(name, languageVersion, ...rest);
  const fileExists = host.fileExists.bind(host);
  host.fileExists = (name) => name === virtual || fileExists(name);
  const readFile = host.readFile.bind(host);
  host.readFile = (name) => (name === virtual ? source : readFile(name));
  const program = ts.createProgram([virtual], options, host);
  return ts.getPreEmitDiagnostics(program).map((d) => {
    const line = d.file && d.start !== undefined ? d.file.getLineAndCharacterOfPosition(d.start).line : -1;
    const owner = [...owners].reverse().find((x) => x.start <= line);
    const text = ts.flattenDiagnosticMessageText(d.messageText, "\n");
    const snippet = line >= 0 ? lines[line]!.trim() : "";
    return { object: owner?.object ?? "(imports)", message: `${text}${snippet ? ` [at: ${snippet}]` : ""}` };
  });
}
