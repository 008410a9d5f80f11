import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { DCLinter } from "dclint";
import { beforeAll, describe, expect, it } from "vitest";
import { loadProcesses, type AppProcess } from "./app-settings.js";
import { checkCompose, interpolationDefault, parseCompose } from "./compose-rules.js";
import { DEFAULT_DRAIN_MARGIN_SECONDS } from "./k8s-rules.js";
import { DOCKER, FIXTURES } from "./paths.js";

const COMPOSE = join(DOCKER, "compose.yaml");
const EXPECTED = { redis: undefined, postgres: undefined, migrate: "migrate", "gateway-1": "gateway", "gateway-2": "gateway", worker: "worker" } as const;

let processes: AppProcess[];
beforeAll(async () => {
  processes = await loadProcesses();
});

/** dclint: the compose-spec JSON schema (ajv) plus its correctness rules; its style-only rules are off. */
function dclint(file: string) {
  const linter = new DCLinter({
    quiet: false,
    debug: false,
    exclude: [],
    rules: {
      "no-build-and-image": 0, // one image, built once and named: the chat services all set both
      "require-project-name-field": 0, // Debian's docker-compose 1.29 refuses a top-level name
      "services-alphabetical-order": 0,
      "service-keys-order": 0,
      "top-level-properties-order": 0,
      "service-dependencies-alphabetical-order": 0,
      "service-ports-alphabetical-order": 0,
      "service-container-name-regex": 0,
      "require-quotes-in-ports": [2, { quoteType: "double" }],
    },
  });
  // dclint's declarations use extensionless imports that NodeNext cannot follow: type the result here.
  const results = linter.lintFiles([file], false) as { messages: { rule: string; message: string }[] }[];
  return results.flatMap((r) => r.messages.map((m) => `${m.rule}: ${m.message}`));
}

const check = (file: string) =>
  checkCompose(parseCompose(readFileSync(file, "utf8")), { processes, expected: EXPECTED, drainMarginSeconds: DEFAULT_DRAIN_MARGIN_SECONDS }).map(
    (v) => `${v.service}: ${v.message}`,
  );

describe("infra/docker/compose.yaml", () => {
  it("validates against the compose specification and passes dclint", () => {
    expect(dclint(COMPOSE)).toEqual([]);
  });

  it("is a local cluster: Redis, Postgres, migrate, two gateways and a worker, healthy, hardened, in order", () => {
    expect(check(COMPOSE)).toEqual([]);
  });

  it("resolves compose interpolation defaults the way compose does", () => {
    expect(interpolationDefault("${CHAT_IMAGE:-chat-cluster:dev}")).toBe("chat-cluster:dev");
    expect(interpolationDefault("${CHAT_JWT_SECRET:?required}")).toBeUndefined();
  });
});

describe("the compose checks reject a broken file", () => {
  it("fixtures/broken-compose.yaml", () => {
    const file = join(FIXTURES, "broken-compose.yaml");
    expect(dclint(file)).toContainEqual(expect.stringMatching(/^invalid-schema: .*additional properties/));
    const messages = check(file);
    for (const pattern of [
      /^\(top level\): the version field is obsolete/,
      /^postgres: missing/,
      /^worker: missing/,
      /^redis: image redis:latest needs a version tag/,
      /^redis: needs a healthcheck/,
      /^gateway-1: CHAT_DRAIN_WINDOW is not read by the gateway/,
      /^gateway-1: CHAT_JWT_SECRET must come from the environment/,
      /^gateway-1: the gateway needs DATABASE_URL/,
      /^gateway-1: port 8000:8000 must bind to 127.0.0.1/,
      /^gateway-1: read_only must be true/,
      /^gateway-1: the healthcheck must request \/readyz on port 8000/,
      /^gateway-1: stop_grace_period 10 s must exceed/,
      /^\(all\): REDIS_URL differs between the chat services/,
    ]) {
      expect(messages, String(pattern)).toContainEqual(expect.stringMatching(pattern));
    }
  });
});

const dockerCompose = spawnSync("docker-compose", ["version"], { encoding: "utf8" }).status === 0;

/** Debian's docker-compose (apt-get install docker-compose) parses and interpolates without a daemon. */
describe.skipIf(!dockerCompose)(`docker-compose config (Debian's docker-compose, no daemon)${dockerCompose ? "" : " (skipped: docker-compose is not installed; apt-get install docker-compose)"}`, () => {
  const run = (env: Record<string, string>) =>
    spawnSync("docker-compose", ["-f", COMPOSE, "config", "-q"], { encoding: "utf8", env: { PATH: process.env["PATH"], ...env } });

  it("accepts compose.yaml when CHAT_JWT_SECRET is set", () => {
    const r = run({ CHAT_JWT_SECRET: "x" });
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
  });

  it("refuses to start without CHAT_JWT_SECRET", () => {
    const r = run({});
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/CHAT_JWT_SECRET/);
  });
});
