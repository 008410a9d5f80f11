import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { DATABASE_URL, REPO_ROOT } from "./helpers/index.js";

/**
 * A process holding a reserved connection whose backend is terminated, then writing a small query on
 * it: postgres.js 3.4.9 throws from a setImmediate (porsager/postgres#1208). The script runs in its own
 * process because the exception cannot be caught; `guard` says whether it installs our guard first.
 */
function runScript(guard: boolean): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const db = join(REPO_ROOT, "packages/db/dist/index.js");
  const script = `
    import { createDb, survivePostgresClosedSocketWrites } from ${JSON.stringify(db)};
    const log = { warn: (f, m) => console.log(JSON.stringify({ level: "warn", msg: m })), fatal: (f, m) => console.log(JSON.stringify({ level: "fatal", msg: m })) };
    if (${guard}) survivePostgresClosedSocketWrites(log);
    const db = createDb(${JSON.stringify(DATABASE_URL)}, { max: 2 });
    const conn = await db.sql.reserve();
    const [{ pid }] = await conn\`SELECT pg_backend_pid() AS pid\`;
    const killer = createDb(${JSON.stringify(DATABASE_URL)}, { max: 1 });
    const sleeping = conn\`SELECT pg_sleep(5)\`.catch((e) => console.log(JSON.stringify({ msg: "sleep failed", code: e.code })));
    await new Promise((r) => setTimeout(r, 200));
    await killer.sql\`SELECT pg_terminate_backend(\${pid})\`;
    await sleeping;
    // A small query on the reserved connection whose socket just closed.
    const next = conn\`SELECT 1\`.then(() => "answered", (e) => "failed " + e.code);
    console.log(JSON.stringify({ msg: "after", next: await Promise.race([next, new Promise((r) => setTimeout(() => r("no answer"), 1000))]) }));
    await killer.close();
    process.exit(0);
  `;
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ["--input-type=module", "-e", script], { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
    child.on("exit", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe("postgres.js writing to a closed connection", () => {
  it("ends a process without the guard, and with it the process logs a warning and goes on", async () => {
    const bare = await runScript(false);
    expect(bare.code, bare.stdout).toBe(1);
    expect(bare.stderr).toContain("Cannot read properties of null (reading 'write')");

    const guarded = await runScript(true);
    expect(guarded.code, guarded.stderr).toBe(0);
    const lines = guarded.stdout.trim().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines.some((l) => l["level"] === "warn" && String(l["msg"]).includes("porsager/postgres#1208"))).toBe(true);
    expect(lines.some((l) => l["level"] === "fatal")).toBe(false);
    expect(lines.find((l) => l["msg"] === "after")).toBeDefined();
  });

  // The guard knows the exception by postgres.js' own file in its stack (isClosedSocketWrite); bundled
  // into dist/main.js, that frame would read main.js and a worker would die in a Postgres outage again.
  it.each(["apps/gateway", "apps/worker", "apps/single-node"])("%s's bundle imports postgres.js from node_modules instead of carrying it", (app) => {
    const bundle = readFileSync(join(REPO_ROOT, app, "dist/main.js"), "utf8");
    expect(bundle).toMatch(/^import .* from "postgres";$/m);
    expect(bundle).not.toContain("function nextWrite(");
  });
});
