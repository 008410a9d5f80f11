import { sweepOrphanUploads, type Db } from "@chat/db";
import type { Logger } from "@chat/log";
import type { MediaStorage } from "./storage.js";

export interface SweeperOptions {
  /** Uploads no message references are deleted once older than this (s). */
  graceSeconds: number;
  /** Time between sweeps (s); 0: never. */
  intervalSeconds: number;
  /** Most uploads deleted per sweep; a backlog goes over the next sweeps. @default 500 */
  batch?: number;
}

/**
 * Deletes uploads that no message references once past the grace period, and (local storage) files
 * in the media directory that no upload row knows, as old (a crash between storing and recording).
 * Every gateway runs one; a Postgres advisory lock lets one sweep at a time, the others skip. The
 * grace period also covers a message still in the stream when the worker is down: set it longer than
 * any persistence outage you expect.
 */
export class MediaSweeper {
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<unknown> | null = null;

  constructor(
    private readonly db: Db,
    private readonly storage: MediaStorage,
    private readonly o: SweeperOptions,
    private readonly log: Logger,
  ) {}

  /** Sweeps every interval, the first one interval after start (plus jitter, so nodes started together spread out). */
  start(): void {
    if (this.o.intervalSeconds === 0 || this.timer) return;
    const every = this.o.intervalSeconds * 1000;
    const tick = () => {
      this.timer = setTimeout(() => {
        this.running = this.sweepOnce().finally(() => {
          this.running = null;
          if (this.timer) tick();
        });
      }, every + Math.floor(Math.random() * Math.min(every, 1000)));
      this.timer.unref();
    };
    tick();
  }

  async stop(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    await this.running;
  }

  /** One sweep; resolves to what it deleted, or null when another node held the lock. Never rejects. */
  async sweepOnce(): Promise<{ uploads: number; strays: number } | null> {
    let strays = 0;
    try {
      const graceStart = new Date(Date.now() - this.o.graceSeconds * 1000);
      const deleted = await sweepOrphanUploads(this.db, {
        graceSeconds: this.o.graceSeconds,
        limit: this.o.batch ?? 500,
        removeFiles: async (rows, known) => {
          for (const row of rows) if (row.storage === this.storage.kind) await this.storage.remove(row.identifier);
          if (!this.storage.listOlderThan) return;
          const old = await this.storage.listOlderThan(graceStart);
          const recorded = await known(old);
          const justDeleted = new Set(rows.map((r) => r.identifier));
          for (const identifier of old) {
            if (recorded.has(identifier) || justDeleted.has(identifier)) continue;
            await this.storage.remove(identifier);
            strays++;
          }
        },
      });
      if (deleted === null) {
        this.log.debug("media sweep skipped: another node is sweeping");
        return null;
      }
      if (deleted.length > 0 || strays > 0) this.log.info({ uploads: deleted.length, strays }, "media sweep deleted");
      return { uploads: deleted.length, strays };
    } catch (err) {
      this.log.warn({ err }, "media sweep failed; the next one retries");
      return null;
    }
  }
}
