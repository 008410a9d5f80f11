import { Transform, type TransformCallback } from "node:stream";
import { SNIFF_BYTES, sniff, type SniffedType } from "./sniff.js";

/** The file is over the upload limit. */
export class UploadTooLargeError extends Error {
  override readonly name = "UploadTooLargeError";
  readonly code = "file_too_large";
  constructor(readonly maxBytes: number) {
    super(`file is larger than ${maxBytes} bytes`);
  }
}

/**
 * What an upload's bytes go through before storage: fails past the size limit while streaming, and
 * holds the first SNIFF_BYTES back until the type is known (`sniffed`), so that storage is only
 * opened for a file we accept, under the type its bytes are.
 */
export class UploadGuard extends Transform {
  bytes = 0;
  /** Resolves to the sniffed type (null: not one we store) once the head is in; rejects if the stream fails first. */
  readonly sniffed: Promise<SniffedType | null>;
  private head: Buffer[] | null = [];
  private headBytes = 0;
  private settle!: { resolve: (t: SniffedType | null) => void; reject: (err: Error) => void };

  constructor(private readonly maxBytes: number) {
    super();
    this.sniffed = new Promise((resolve, reject) => (this.settle = { resolve, reject }));
    // Whoever awaits it handles the rejection; an unawaited one must not be an unhandled rejection.
    this.sniffed.catch(() => {});
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.bytes += chunk.length;
    if (this.bytes > this.maxBytes) return done(new UploadTooLargeError(this.maxBytes));
    if (!this.head) return done(null, chunk);
    this.head.push(chunk);
    this.headBytes += chunk.length;
    if (this.headBytes >= SNIFF_BYTES) this.decide();
    done();
  }

  override _flush(done: TransformCallback): void {
    if (this.head) this.decide();
    done();
  }

  override _destroy(err: Error | null, done: (err?: Error | null) => void): void {
    if (this.head) {
      this.head = null;
      this.settle.reject(err ?? new Error("upload stream closed before its type was known"));
    }
    done(err);
  }

  private decide(): void {
    const head = Buffer.concat(this.head!);
    this.head = null;
    this.settle.resolve(sniff(head));
    this.push(head);
  }
}
