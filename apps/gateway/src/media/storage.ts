import type { Readable } from "node:stream";

/** Where uploaded files live. Local disk by default, S3-compatible object storage when configured. */
export interface MediaStorage {
  readonly kind: "local" | "s3";
  /** Stores the stream under `identifier`; resolves to the bytes written. The stream is already size-limited. */
  save(identifier: string, contentType: string, body: Readable): Promise<number>;
  /** A URL a participant can fetch the file from, and when that URL stops working (null: never). */
  locate(identifier: string): Promise<{ url: string; expiresAt: Date | null }>;
  /** Opens the file for GET /chat-media/<identifier>; only local storage serves files itself. */
  open?(identifier: string): Promise<{ readable: Readable; size: number } | null>;
  /** Deletes a partial or refused upload. */
  remove(identifier: string): Promise<void>;
}

/** Identifiers are ours (`<uuidv7>.<ext>`), never the client's file name: no path can be smuggled in. */
export const IDENTIFIER_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}\.[a-z0-9]{1,8}$/;
