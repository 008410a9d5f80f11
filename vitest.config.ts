import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["packages/*/src/**/*.test.ts", "apps/*/src/**/*.test.ts"],
    globalSetup: ["packages/tests/src/global-setup.ts"],
    testTimeout: 30000,
    hookTimeout: 30000,
    pool: "forks",
    // Two cores run gateways, workers, Redis and Postgres besides the tests: keep files to two at a time.
    maxWorkers: 2,
    minWorkers: 1,
  },
});
