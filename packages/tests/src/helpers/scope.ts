import { onTestFinished } from "vitest";

const fileEnd: (() => unknown)[] = [];

/**
 * Runs what `atFileEnd` (and `atEnd` outside a test) registered, newest first. The setup file
 * (file-scope.ts) calls it after each test file: test files share a worker process, so a hook
 * registered here at import would run after the first file only.
 */
export async function runFileEnd(): Promise<void> {
  for (let fn = fileEnd.pop(); fn; fn = fileEnd.pop()) await fn();
}

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
