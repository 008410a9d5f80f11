import { pino, type Logger } from "pino";

/** JSON lines on stdout; `component` names who speaks. Secrets are never passed as fields. */
export function createLogger(level: string, base: Record<string, unknown>): Logger {
  return pino({
    level,
    base,
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
    redact: { paths: ["token", "authorization", "*.token", "*.authorization", "jwtSecret", "*.jwtSecret"], censor: "[redacted]" },
  });
}

export type { Logger };
