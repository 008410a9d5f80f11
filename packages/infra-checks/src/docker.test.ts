import { execFileSync, spawn, spawnSync } from "node:child_process";
import { cpSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { randomBytes } from "node:crypto";
import { createRequire } from "node:module";
import { afterAll, describe, expect, it, onTestFinished } from "vitest";
import { dockerIgnores, lintDockerfile } from "./dockerfile-rules.js";
import { DOCKER, FIXTURES, REPO_ROOT } from "./paths.js";

const DOCKERFILE = readFileSync(join(DOCKER, "Dockerfile"), "utf8");
const dockerfilelint = createRequire(import.meta.url)("dockerfilelint") as { run(dir: string, content: string): { line: number; rule: string; title: string }[] };

describe("infra/docker/Dockerfile", () => {
  it("passes our rules: multi-stage, pinned bookworm base, numeric non-root user, exec-form CMD, production deps only", () => {
    expect(lintDockerfile(DOCKERFILE)).toEqual([]);
  });

  it("passes dockerfilelint", () => {
    expect(dockerfilelint.run(DOCKER, DOCKERFILE)).toEqual([]);
  });

  it("builds with the runtime assembly script, whose output the final stage copies", () => {
    expect(DOCKERFILE).toMatch(/sh infra\/docker\/assemble-runtime\.sh \/out/);
    expect(DOCKERFILE).toMatch(/COPY --from=build \/out \.\//);
    expect(DOCKERFILE).toMatch(/COPY --from=build \/src\/node_modules \.\/node_modules/);
  });
});

describe("the Dockerfile checks reject a broken Dockerfile", () => {
  it("fixtures/Dockerfile.broken", () => {
    const rules = lintDockerfile(readFileSync(join(FIXTURES, "Dockerfile.broken"), "utf8")).map((v) => `${v.rule}: ${v.message}`);
    for (const pattern of [/^multi-stage:/, /^base-tag: node:latest/, /^base-glibc:/, /^user: the final stage must switch/, /^healthcheck: HEALTHCHECK NONE needs a comment/, /^cmd: CMD in shell form/, /^no-build-tools:/, /^prod-deps:/, /^no-add:/]) {
      expect(rules, String(pattern)).toContainEqual(expect.stringMatching(pattern));
    }
    expect(dockerfilelint.run(FIXTURES, readFileSync(join(FIXTURES, "Dockerfile.broken"), "utf8")).map((d) => d.rule)).toContain("latest_tag");
  });
});

describe(".dockerignore", () => {
  const patterns = readFileSync(join(REPO_ROOT, ".dockerignore"), "utf8").split("\n");
  it.each([
    "package-lock.json",
    "package.json",
    "turbo.json",
    "apps/gateway/src/start.ts",
    "infra/build/bundle-app.mjs",
    "packages/bus/src/lua/presence-join.lua",
    "packages/db/migrations/meta/_journal.json",
    "packages/tests/package.json",
    "infra/docker/assemble-runtime.sh",
    "apps/gateway/public/index.html",
    "apps/gateway/public/app.js",
  ])("sends %s to the build", (path) => {
    expect(dockerIgnores(patterns, path)).toBe(false);
  });
  it.each(["node_modules/ioredis/package.json", "apps/gateway/dist/main.js", "apps/gateway/node_modules/x", ".git/HEAD", ".env", "k6/chat.js", "infra/k8s/base/kustomization.yaml", "apps/gateway/.data/media/a.png"])(
    "leaves %s out",
    (path) => {
      expect(dockerIgnores(patterns, path)).toBe(true);
    },
  );
});

/**
 * The image's /app without Docker: assemble-runtime.sh's output next to a node_modules whose
 * workspace links point into it, then the commands of the image run from there: the three roles
 * against the suite's Redis and Postgres (so only where they answer: see vitest.config.ts), and the
 * single node on its embedded engine (anywhere). A missing migration folder, Lua script, WASM file
 * or dist file fails here.
 */
const servicesUp = process.env["CHAT_TEST_SERVICES"] === "up";
/** A test that needs Redis and Postgres; where they do not answer, its name says why it was skipped. */
const withServices = (name: string, fn: () => unknown) =>
  it.skipIf(!servicesUp)(`${name}${servicesUp ? "" : " (skipped: Redis and Postgres do not answer)"}`, fn);

describe("the image layout runs the processes", () => {
  const app = mkdtempSync(join(tmpdir(), "chat-image-"));
  afterAll(() => rmSync(app, { recursive: true, force: true }));
  const env = {
    PATH: process.env["PATH"],
    REDIS_URL: process.env["REDIS_URL"] ?? "redis://127.0.0.1:6379",
    DATABASE_URL: process.env["DATABASE_URL"] ?? "postgres://postgres@127.0.0.1:5432/chat_test",
    CHAT_REDIS_PREFIX: `test:image:${randomBytes(4).toString("hex")}:`,
    CHAT_JWT_SECRET: "image-layout-test-secret-of-32-bytes-or-more",
    NODE_ENV: "production",
  };

  it("assemble-runtime.sh copies the entry points, the migrations, the Lua scripts and the browser client", () => {
    execFileSync("sh", [join(DOCKER, "assemble-runtime.sh"), app], { cwd: REPO_ROOT, stdio: "pipe" });
    expect(readdirSync(join(app, "apps/gateway/public"))).toEqual(expect.arrayContaining(["index.html", "app.js", "style.css"]));
    expect(readdirSync(join(app, "packages/db/migrations")).filter((f) => f.endsWith(".sql")).length).toBeGreaterThan(0);
    expect(readdirSync(join(app, "packages/bus/dist/lua")).filter((f) => f.endsWith(".lua")).length).toBeGreaterThan(0);
    mkdirSync(join(app, "node_modules/@chat"), { recursive: true });
    for (const entry of readdirSync(join(REPO_ROOT, "node_modules"))) {
      if (entry !== "@chat") symlinkSync(join(REPO_ROOT, "node_modules", entry), join(app, "node_modules", entry));
    }
    for (const ws of ["apps", "packages"].flatMap((d) => readdirSync(join(app, d)).map((n) => join(app, d, n)))) {
      const name = (JSON.parse(readFileSync(join(ws, "package.json"), "utf8")) as { name: string }).name;
      if (name.startsWith("@chat/")) symlinkSync(ws, join(app, "node_modules", name));
    }
  });

  function start(script: string, extra: Record<string, string | undefined>, readyMsg: string): Promise<{ stop: () => Promise<number | null>; ready: Record<string, unknown> }> {
    const child = spawn(process.execPath, [script], { cwd: app, env: { ...env, ...extra }, stdio: ["ignore", "pipe", "pipe"] });
    const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
    // A test that fails before its stop() must not leave the process running after the suite.
    onTestFinished(() => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    });
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill("SIGKILL");
        reject(new Error(`${script} not ready: ${stderr}`));
      }, 15000);
      void exited.then((code) => reject(new Error(`${script} exited ${code}: ${stderr}`)));
      createInterface({ input: child.stdout }).on("line", (line) => {
        const entry = JSON.parse(line) as Record<string, unknown>;
        if (entry["msg"] !== readyMsg) return;
        clearTimeout(timer);
        resolve({
          ready: entry,
          stop: () => {
            child.kill("SIGTERM");
            return exited;
          },
        });
      });
    });
  }

  withServices("node packages/db/dist/migrate-cli.js applies the migrations", () => {
    const r = spawnSync(process.execPath, ["packages/db/dist/migrate-cli.js"], { cwd: app, env, encoding: "utf8" });
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
  });

  withServices("node apps/worker/dist/main.js becomes ready and stops on SIGTERM", async () => {
    const worker = await start("apps/worker/dist/main.js", { CHAT_WORKER_HTTP_PORT: "0" }, "consuming");
    const port = worker.ready["httpPort"] as number;
    await expect.poll(async () => (await fetch(`http://127.0.0.1:${port}/readyz`)).status, { timeout: 10000 }).toBe(200);
    expect(await worker.stop()).toBe(0);
  });

  withServices("node apps/gateway/dist/main.js loads the native uWebSockets.js and the Lua scripts, serves /readyz and stops on SIGTERM", async () => {
    const gateway = await start("apps/gateway/dist/main.js", { PORT: "0", CHAT_DRAIN_WINDOW_MS: "0" }, "listening");
    const port = gateway.ready["port"] as number;
    expect((await fetch(`http://127.0.0.1:${port}/readyz`)).status).toBe(200);
    expect(await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()).toContain("chat_gateway_open_sockets");
    const page = await fetch(`http://127.0.0.1:${port}/`);
    expect(page.status).toBe(200);
    expect(page.headers.get("content-type")).toMatch(/^text\/html/);
    expect(await gateway.stop()).toBe(0);
  });

  it("node apps/single-node/dist/main.js runs on its embedded engine (no Redis, no Postgres), serves the client and stops on SIGTERM", async () => {
    const data = mkdtempSync(join(tmpdir(), "chat-image-data-"));
    // The run's migrated embedded data directory (packages/tests' global setup), when there is one:
    // migrating a new PGlite is not what this test is about (single-node.test.ts covers it).
    const template = process.env["CHAT_TEST_EMBEDDED_TEMPLATE"];
    if (template) cpSync(template, data, { recursive: true });
    try {
      const node = await start(
        "apps/single-node/dist/main.js",
        { REDIS_URL: undefined, DATABASE_URL: undefined, CHAT_DATA_DIR: data, PORT: "0", HOST: "127.0.0.1", CHAT_WORKER_HTTP_PORT: "0", CHAT_DRAIN_WINDOW_MS: "0" },
        "started",
      );
      expect(node.ready["engine"]).toBe("embedded");
      const url = String(node.ready["url"]);
      expect((await fetch(`${url}readyz`)).status).toBe(200);
      expect((await fetch(url)).headers.get("content-type")).toMatch(/^text\/html/);
      expect(await node.stop()).toBe(0);
    } finally {
      rmSync(data, { recursive: true, force: true });
    }
  });
});
