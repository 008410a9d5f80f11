import type { TestModule } from "vitest/node";
import type { Reporter } from "vitest/reporters";

/**
 * The last lines of `npm test`: how long the suites took, every test that was skipped and why (a
 * skipped suite says why in its name, e.g. "(skipped: no browser at /usr/bin/chromium)"), and whether
 * the Redis/Postgres suites ran, so a partial run cannot pass for a full one.
 */
export default class ServicesReporter implements Reporter {
  private readonly startedAt = Date.now();

  onTestRunEnd(testModules: ReadonlyArray<TestModule>): void {
    const skipped: string[] = [];
    let total = 0;
    for (const module of testModules) {
      for (const test of module.children.allTests()) {
        total++;
        const result = test.result();
        if (result.state === "skipped") skipped.push(`${module.moduleId.replace(`${process.cwd()}/`, "")} > ${test.fullName}${result.note ? ` (${result.note})` : ""}`);
      }
    }
    const seconds = Math.round((Date.now() - this.startedAt) / 1000);
    // At exit, so it comes after the default reporter's summary (stdout writes are synchronous then).
    process.once("exit", () => this.print(seconds, total, testModules.length, skipped));
  }

  private print(seconds: number, total: number, files: number, skipped: string[]): void {
    let out = `\nSuites: ${total} tests in ${files} files, ${Math.floor(seconds / 60)} min ${seconds % 60} s.\n`;
    out += skipped.length === 0 ? "Skipped: none.\n" : `Skipped: ${skipped.length}, each with why:\n${skipped.map((s) => `  - ${s}`).join("\n")}\n`;
    const problems = process.env["CHAT_TEST_SERVICES_PROBLEMS"];
    if (process.env["CHAT_TEST_SERVICES"] === "up") {
      const cluster = process.env["CHAT_TEST_REDIS_CLUSTER"];
      process.stdout.write(
        cluster === "up"
          ? `${out}Engines tested: embedded, Redis + Postgres (both answered), and a local Redis Cluster (3 masters + 3 replicas) + Postgres.\n`
          : `${out}Engines tested: embedded, and Redis + Postgres (both answered).\n` +
              `NOT RUN: the Redis Cluster engine of the engine suites, because the local cluster ${cluster ?? "was not started"}.\n`,
      );
      return;
    }
    process.stdout.write(
      `${out}Engines tested: embedded only.\n` +
        "NOT RUN: the Redis/Postgres suites (packages/tests/src/*.test.ts and the Redis engine of the engine suite), because:\n" +
        `${(problems ?? "").split("\n").map((p) => `  - ${p}`).join("\n")}\n` +
        "Start Redis and Postgres (or set REDIS_URL / DATABASE_URL) and run npm test again to run them; CI always does.\n",
    );
  }
}
