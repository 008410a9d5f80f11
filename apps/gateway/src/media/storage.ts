import type { Readable } from "node:stream";
import type { SniffedType } from "./sniff.js";

/** Where uploaded files live. Local disk by default, S3-compatible object storage when configured. */
export interface MediaStorage {
  readonly kind: "local" | "s3";
  /**
   * Stores the stream under `identifier` as the sniffed type (S3 keeps it as the object's Content-Type
   * and Content-Disposition); resolves to the bytes written. The stream is already size-limited. On
   * failure (the stream errored: too large, the client went away) nothing is left open and the caller
   * removes the partial file.
   */
  save(identifier: string, type: SniffedType, body: Readable): Promise<number>;
  /** A URL a participant can fetch the file from, and when that URL stops working (null: never). */
  locate(identifier: string): Promise<{ url: string; expiresAt: Date | null }>;
  /** Opens the file for GET /chat-media/<identifier>; only local storage serves files itself. */
  open?(identifier: string): Promise<{ readable: Readable; size: number } | null>;
  /** Deletes a file (a partial or refused upload, or an orphan the sweep found); no error if absent. */
  remove(identifier: string): Promise<void>;
  /**
   * Local storage only: identifiers of files last written before `before`, for the sweep of files no
   * upload row knows (a crash between writing and recording).
   */
  listOlderThan?(before: Date): Promise<string[]>;
}

/** Identifiers are ours (`<uuidv7>.<ext>`), never the client's file name: no path can be smuggled in. */
export const IDENTIFIER_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}\.[a-z0-9]{1,8}$/;

/** `Content-Disposition` of a stored file: inline for a safe raster image, an attachment otherwise. */
export function contentDisposition(identifier: string, type: SniffedType | undefined): string {
  return type?.inline ? `inline; filename="${identifier}"` : `attachment; filename="${identifier}"`;
}

/** A presigned URL must be renewed once it has expired or expires within this margin. */
export const REFRESH_MARGIN_MS = 60_000;

export function needsRefresh(expiresAt: Date | null, now: Date): boolean {
  return expiresAt !== null && expiresAt.getTime() - now.getTime() <= REFRESH_MARGIN_MS;
}
