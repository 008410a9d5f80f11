import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { REPO_ROOT } from "./paths.js";

/** One process of the image, recognised by its command, and the environment it reads. */
export interface AppProcess {
  name: "gateway" | "worker" | "migrate";
  /** `node <script>`: the container command that runs it. */
  script: string;
  /** Every variable the process reads: its settings table plus those read directly (found in dist/). */
  reads: Set<string>;
  /** Variables without which it would run against the wrong backends or refuse to start. */
  required: string[];
  /** Parses a value the way the process will (throws with the reason), when the variable is in a settings table. */
  parse(name: string, value: string): void;
  /** The value the process uses when the variable is unset. */
  defaultOf(name: string): string | undefined;
}

interface Setting {
  env: string;
  default: string | undefined;
  parse: (raw: string) => unknown;
}

/** Names read as `env["X"]`, `env.X`, `process.env["X"]` or `process.env.X` in the built JavaScript of some folders. */
export function envReadsIn(dirs: string[]): Set<string> {
  const names = new Set<string>();
  const pattern = /\benv(?:\[\s*["'`]([A-Z][A-Z0-9_]*)["'`]\s*\]|\.([A-Z][A-Z0-9_]*)\b)/g;
  for (const dir of dirs) {
    for (const entry of readdirSync(dir, { recursive: true, withFileTypes: true })) {
      if (!entry.isFile() || !entry.name.endsWith(".js")) continue;
      const text = readFileSync(join(entry.parentPath, entry.name), "utf8");
      for (const m of text.matchAll(pattern)) names.add((m[1] ?? m[2])!);
    }
  }
  return names;
}

function fromTable(name: AppProcess["name"], script: string, table: Record<string, Setting>, distDirs: string[], required: string[]): AppProcess {
  const byEnv = new Map(Object.values(table).map((s) => [s.env, s]));
  const reads = new Set([...byEnv.keys(), ...envReadsIn(distDirs)]);
  return {
    name,
    script,
    reads,
    required,
    parse(env, value) {
      byEnv.get(env)?.parse(value);
    },
    defaultOf: (env) => byEnv.get(env)?.default,
  };
}

/** The three processes, from the built apps (run `npm run build` first; `npm test` does). */
export async function loadProcesses(): Promise<AppProcess[]> {
  const gatewayDist = join(REPO_ROOT, "apps/gateway/dist");
  const workerDist = join(REPO_ROOT, "apps/worker/dist");
  const dbDist = join(REPO_ROOT, "packages/db/dist");
  const { GATEWAY_SETTINGS } = (await import(join(gatewayDist, "config.js"))) as { GATEWAY_SETTINGS: Record<string, Setting> };
  const { WORKER_SETTINGS } = (await import(join(workerDist, "config.js"))) as { WORKER_SETTINGS: Record<string, Setting> };
  return [
    fromTable("gateway", "apps/gateway/dist/main.js", GATEWAY_SETTINGS, [gatewayDist], ["REDIS_URL", "DATABASE_URL", "CHAT_JWT_SECRET"]),
    fromTable("worker", "apps/worker/dist/main.js", WORKER_SETTINGS, [workerDist], ["REDIS_URL", "DATABASE_URL"]),
    // migrate-cli reads DATABASE_URL itself; it has no settings table.
    fromTable("migrate", "packages/db/dist/migrate-cli.js", {}, [dbDist], ["DATABASE_URL"]),
  ];
}

/** Which process a container command runs (`node <script>`), or undefined for other images. */
export function processOf(command: unknown, processes: AppProcess[]): AppProcess | undefined {
  if (!Array.isArray(command) || command[0] !== "node") return undefined;
  return processes.find((p) => p.script === command[1]);
}
