import { createReadStream, createWriteStream, mkdirSync } from "node:fs";
import { readdir, rm, stat } from "node:fs/promises";
import { join, resolve } from "node:path";
import type { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { MediaUrlSigner } from "./signed-url.js";
import type { SniffedType } from "./sniff.js";
import { IDENTIFIER_PATTERN, type MediaStorage } from "./storage.js";

/** Files in one directory, served back by the gateway under /chat-media/<identifier> through signed URLs. */
export class LocalMediaStorage implements MediaStorage {
  readonly kind = "local" as const;
  private readonly dir: string;

  constructor(
    dir: string,
    private readonly signer: MediaUrlSigner,
  ) {
    this.dir = resolve(dir);
    // At start-up, so that save() attaches its stream handlers before any await.
    mkdirSync(this.dir, { recursive: true });
  }

  private path(identifier: string): string {
    // Defence in depth: callers validate too, but nothing outside the pattern ever reaches the disk.
    if (!IDENTIFIER_PATTERN.test(identifier)) throw new Error(`invalid media identifier ${JSON.stringify(identifier)}`);
    return join(this.dir, identifier);
  }

  async save(identifier: string, _type: SniffedType, body: Readable): Promise<number> {
    const out = createWriteStream(this.path(identifier), { flags: "wx" });
    // pipeline destroys `out` (closing its descriptor) when `body` errors, e.g. on an aborted upload.
    await pipeline(body, out);
    return out.bytesWritten;
  }

  locate(identifier: string): Promise<{ url: string; expiresAt: Date | null }> {
    return Promise.resolve(this.signer.sign(identifier));
  }

  async open(identifier: string): Promise<{ readable: Readable; size: number } | null> {
    const path = this.path(identifier);
    try {
      const s = await stat(path);
      return { readable: createReadStream(path), size: s.size };
    } catch {
      return null;
    }
  }

  async remove(identifier: string): Promise<void> {
    await rm(this.path(identifier), { force: true });
  }

  async listOlderThan(before: Date): Promise<string[]> {
    const names = (await readdir(this.dir)).filter((n) => IDENTIFIER_PATTERN.test(n));
    const old: string[] = [];
    for (const name of names) {
      const s = await stat(join(this.dir, name)).catch(() => null);
      if (s?.isFile() && s.mtime < before) old.push(name);
    }
    return old;
  }
}
