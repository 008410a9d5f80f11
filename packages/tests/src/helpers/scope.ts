import { afterAll, onTestFinished } from "vitest";

const fileEnd: (() => unknown)[] = [];
// Registered when the test file imports the helpers, so it belongs to the file's root suite.
afterAll(async () => {
  for (let fn = fileEnd.pop(); fn; fn = fileEnd.pop()) await fn();
});

/**
 * Runs `fn` when the current test ends; called outside a test (in a beforeAll, for what several tests
 * share), when the file's tests are done. Either way in reverse order of registration.
 */
export function atEnd(fn: () => unknown): void {
  try {
    onTestFinished(async () => {
      await fn();
    });
  } catch {
    fileEnd.push(fn);
  }
}

/** Runs `fn` when the file's tests are done, even when called inside a test. */
export function atFileEnd(fn: () => unknown): void {
  fileEnd.push(fn);
}
