import { randomBytes } from "node:crypto";
import { fileURLToPath } from "node:url";

export const REDIS_URL = process.env["REDIS_URL"] ?? "redis://127.0.0.1:6379";
/** Tests use their own database unless told otherwise, so a developer's `chat` data is left alone. */
export const DATABASE_URL = process.env["DATABASE_URL"] ?? "postgres://postgres@127.0.0.1:5432/chat_test";
/** At least 32 bytes: production mode refuses shorter secrets. */
export const JWT_SECRET = "test-secret-for-the-suite-only-0123456789";
export const REPO_ROOT = fileURLToPath(new URL("../../../../", import.meta.url));

/** A Redis prefix no other test uses, so suites share one Redis without seeing each other. */
export function freshPrefix(label = "t"): string {
  return `test:${label}:${randomBytes(4).toString("hex")}:`;
}

/** A username no other test uses (the database is shared across suites). */
export function uniqueUser(name: string): string {
  return `${name}_${randomBytes(4).toString("hex")}`;
}
