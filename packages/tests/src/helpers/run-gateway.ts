/** Running the gateway to completion, for the start-up tests (startup.test.ts, startup-errors.test.ts). */
import { runScript } from "./processes.js";
import { freshPrefix } from "./env.js";

export const GATEWAY = "apps/gateway/dist/main.js";
export const VALID_SECRET = "a-valid-secret-of-at-least-32-bytes-0123";

/** Runs the gateway to completion (it should refuse to start); a gateway that does start is killed after timeoutMs. */
export async function runGateway(env: Record<string, string>, timeoutMs = 8000) {
  const r = await runScript(GATEWAY, [], { PORT: "0", HOST: "127.0.0.1", CHAT_REDIS_PREFIX: freshPrefix("startup"), ...env }, timeoutMs);
  const lines = r.stdout
    .split("\n")
    .filter((l) => l.trim() !== "")
    .map((l) => {
      try {
        return JSON.parse(l) as Record<string, unknown>;
      } catch {
        return { msg: "<non-json>", line: l };
      }
    });
  return { ...r, lines, listened: lines.some((l) => l["msg"] === "listening") };
}
