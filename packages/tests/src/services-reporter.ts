import type { Reporter } from "vitest/reporters";

/**
 * Says in the last lines of `npm test` whether the Redis/Postgres suites ran, so a run without
 * them cannot pass for a full one.
 */
export default class ServicesReporter implements Reporter {
  onTestRunEnd(): void {
    // At exit, so it comes after the default reporter's summary (stdout writes are synchronous then).
    process.once("exit", () => this.print());
  }

  private print(): void {
    const problems = process.env["CHAT_TEST_SERVICES_PROBLEMS"];
    if (process.env["CHAT_TEST_SERVICES"] === "up") {
      process.stdout.write("\nEngines tested: embedded, and Redis + Postgres (both answered).\n");
      return;
    }
    process.stdout.write(
      "\nEngines tested: embedded only.\n" +
        "NOT RUN: the Redis/Postgres suites (packages/tests/src/*.test.ts and the Redis engine of the engine suite), because:\n" +
        `${(problems ?? "").split("\n").map((p) => `  - ${p}`).join("\n")}\n` +
        "Start Redis and Postgres (or set REDIS_URL / DATABASE_URL) and run npm test again to run them; CI always does.\n",
    );
  }
}
