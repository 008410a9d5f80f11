import { createRequire } from "node:module";
import type * as Uws from "uWebSockets.js";

export class NativeUwsMissingError extends Error {
  override readonly name = "NativeUwsMissingError";
  readonly code = "uws_native_missing";
}

/**
 * Loads uWebSockets.js and refuses its JavaScript fallback: the package we depend on silently swaps
 * in a slow pure-JS server when the native binary does not load (wrong glibc, wrong Node ABI).
 */
export function loadNativeUws(): typeof Uws {
  if (/^(true|1)$/i.test(process.env["UWS_USE_FALLBACK"] ?? "")) {
    throw new NativeUwsMissingError("UWS_USE_FALLBACK is set; this server runs only on the native uWebSockets.js binary");
  }
  const require = createRequire(import.meta.url);
  const originalWarn = console.warn;
  const warnings: string[] = [];
  // The loader reports a failed native load through console.warn before falling back.
  console.warn = (...args: unknown[]) => void warnings.push(args.map(String).join(" "));
  let uws: typeof Uws;
  try {
    uws = require("uWebSockets.js") as typeof Uws;
  } finally {
    console.warn = originalWarn;
  }
  const native = typeof uws.App === "function" && Function.prototype.toString.call(uws.App).includes("[native code]");
  if (!native) {
    throw new NativeUwsMissingError(
      `the native uWebSockets.js binary did not load for ${process.platform}-${process.arch} ABI ${process.versions.modules}: ${warnings.join(" | ") || "JS fallback in use"}`,
    );
  }
  return uws;
}
