import type { Readable } from "node:stream";

/** An HTTP request as the API handlers see it: copied out of the transport, no uWebSockets.js types. */
export interface ApiRequest {
  method: string;
  path: string;
  /** Decoded path parameters of the route. */
  params: Record<string, string>;
  query: URLSearchParams;
  /** Lower-case header names. */
  headers: Record<string, string>;
  /** The body as a stream, for requests that have one (POST). */
  body?: Readable;
}

export interface ApiResponse {
  status: number;
  headers?: Record<string, string>;
  /** JSON-serializable value, sent as application/json. */
  json?: unknown;
  /** A file to stream back. */
  stream?: { readable: Readable; size: number; contentType: string };
}

export class ApiError extends Error {
  override readonly name = "ApiError";
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/**
 * A request body of at most `maxBytes`, as text: a larger declared length is refused before reading,
 * a body that grows past the limit is dropped when it does (413 `body_too_large`).
 */
export async function readBody(body: Readable | undefined, maxBytes: number, declaredLength = 0): Promise<string> {
  const tooLarge = () => new ApiError(413, "body_too_large", `send at most ${maxBytes} bytes`);
  if (declaredLength > maxBytes) throw tooLarge();
  if (!body) return "";
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > maxBytes) {
      body.destroy();
      throw tooLarge();
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString("utf8");
}

export function json(status: number, body: unknown): ApiResponse {
  return { status, json: body };
}

export function errorResponse(err: ApiError): ApiResponse {
  return json(err.status, { error: err.code, message: err.message });
}

/** Parses ?limit= strictly: an integer from 1 to max, default when absent. */
export function parseLimit(query: URLSearchParams, fallback: number, max: number): number {
  const raw = query.get("limit");
  if (raw === null || raw === "") return fallback;
  if (!/^\d+$/.test(raw) || Number(raw) < 1 || Number(raw) > max) {
    throw new ApiError(400, "invalid_limit", `limit must be an integer from 1 to ${max}`);
  }
  return Number(raw);
}
