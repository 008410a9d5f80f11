import { defineConfig } from "vitest/config";
import { probeServices } from "./packages/tests/src/services.js";

const redisUrl = process.env["REDIS_URL"] ?? "redis://127.0.0.1:6379";
const databaseUrl = process.env["DATABASE_URL"] ?? "postgres://postgres@127.0.0.1:5432/chat_test";

export default defineConfig(async () => {
  // Without Redis and Postgres (a laptop with only Node), the embedded engine's suites still run and
  // the services reporter says, last, what did not run and why. Test workers inherit these variables.
  const services = await probeServices(redisUrl, databaseUrl);
  process.env["CHAT_TEST_SERVICES"] = services.up ? "up" : "absent";
  process.env["CHAT_TEST_SERVICES_PROBLEMS"] = services.problems.join("\n");
  // The AWS SDK (S3 media) warns on Node 20 that its 2027 releases will need Node 22; the README says
  // so. In the test workers, which load the SDK, that notice is only noise in every run's output.
  process.env["AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED"] = "true";
  return {
    test: {
      include: ["packages/*/src/**/*.test.ts", "apps/*/src/**/*.test.ts"],
      // The cross-app suites at the top of packages/tests need Redis and Postgres; engines/ does not.
      exclude: services.up ? ["**/node_modules/**"] : ["**/node_modules/**", "packages/tests/src/*.test.ts"],
      globalSetup: ["packages/tests/src/global-setup.ts"],
      setupFiles: ["packages/tests/src/file-scope.ts"],
      reporters: ["default", "./packages/tests/src/services-reporter.ts"],
      testTimeout: 30000,
      hookTimeout: 30000,
      pool: "forks",
      // Files run one after another in a few long-lived worker processes, not each in a fresh one:
      // booting a worker and importing the helpers cost about 1.5 s of CPU per file (76 files). The
      // files share nothing that matters: every test names its own Redis prefix and users, and
      // file-scope.ts runs each file's teardown.
      isolate: false,
      // Three files at a time on two cores: most tests spend much of their time waiting (grace delays,
      // TTLs, other processes), so a third file fills those waits. Measured on an idle 2-core machine:
      // 254 s with three against 275 s with two, every test passing; the cores were 92 % busy.
      maxWorkers: 3,
      // As many as maxWorkers: with fewer, vitest 3.2 terminated an idle extra worker of a shared
      // (isolate: false) pool mid-run, an unhandled "Terminating worker thread" that ended the run.
      minWorkers: 3,
    },
  };
});
