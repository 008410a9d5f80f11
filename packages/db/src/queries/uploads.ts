import { and, eq, inArray, lt, sql } from "drizzle-orm";
import type { Db } from "../client.js";
import { uploadReservations, uploads } from "../schema.js";

export type UploadRow = typeof uploads.$inferSelect;

export async function insertUpload(db: Db, row: Omit<UploadRow, "createdAt">): Promise<void> {
  await db.insert(uploads).values(row);
}

export async function uploadById(db: Db, identifier: string): Promise<UploadRow | undefined> {
  const [row] = await db.select().from(uploads).where(eq(uploads.identifier, identifier)).limit(1);
  return row;
}

export interface UploadReservation {
  /** A fresh uuid per upload attempt. */
  id: string;
  username: string;
  /** The most the upload may store (its declared size, at most the upload limit). */
  bytes: number;
  /** The user's budget over the window, in bytes. */
  budget: number;
  windowSeconds: number;
}

/**
 * Reserves an upload's bytes against its user's budget over the last `windowSeconds`, before anything
 * is stored; false (nothing reserved) when it does not fit. Reservations of one user are serialized
 * by a transaction-scoped advisory lock, so parallel uploads on any number of gateways never overrun
 * the budget together.
 */
export async function reserveUploadBytes(db: Db, r: UploadReservation): Promise<boolean> {
  return db.transaction(async (tx) => {
    await tx.execute(sql`SELECT pg_advisory_xact_lock(hashtext('chat:upload-quota'), hashtext(${r.username}))`);
    const windowStart = sql`now() - make_interval(secs => ${r.windowSeconds})`;
    await tx.delete(uploadReservations).where(and(eq(uploadReservations.username, r.username), lt(uploadReservations.createdAt, windowStart)));
    const [row] = await tx
      .select({ used: sql<string>`coalesce(sum(${uploadReservations.bytes}), 0)::text` })
      .from(uploadReservations)
      .where(eq(uploadReservations.username, r.username));
    if (Number(row?.used ?? 0) + r.bytes > r.budget) return false;
    await tx.insert(uploadReservations).values({ id: r.id, username: r.username, bytes: r.bytes });
    return true;
  });
}

/** Settles a reservation to what the upload stored (0 when it failed), giving the rest back. */
export async function settleUploadReservation(db: Db, id: string, storedBytes: number): Promise<void> {
  await db
    .update(uploadReservations)
    .set({ bytes: sql`least(${uploadReservations.bytes}, ${storedBytes})` })
    .where(eq(uploadReservations.id, id));
}

export interface OrphanSweep {
  /** Uploads created longer ago than this, that no message references, are deleted. */
  graceSeconds: number;
  /** Most uploads deleted in one sweep. */
  limit: number;
  /**
   * Deletes the files of the rows about to be deleted, and stray files; runs inside the sweep's
   * transaction, so when it throws the rows stay for the next sweep.
   */
  removeFiles(rows: Pick<UploadRow, "identifier" | "storage">[], knownIdentifiers: (candidates: string[]) => Promise<Set<string>>): Promise<void>;
}

/**
 * One sweep of uploads that no message references once past the grace period, under a
 * transaction-scoped advisory lock: with several gateways, one sweeps and the others skip (null).
 * Resolves to the identifiers deleted.
 */
export async function sweepOrphanUploads(db: Db, s: OrphanSweep): Promise<string[] | null> {
  return db.transaction(async (tx) => {
    const [lock] = await tx.execute<{ locked: boolean }>(sql`SELECT pg_try_advisory_xact_lock(hashtext('chat:media-sweep')) AS locked`);
    if (!lock?.locked) return null;
    const rows = await tx.execute<{ identifier: string; storage: string }>(sql`
      DELETE FROM uploads WHERE identifier IN (
        SELECT u.identifier FROM uploads u
        WHERE u.created_at < now() - make_interval(secs => ${s.graceSeconds})
          AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.file_identifier = u.identifier)
        ORDER BY u.created_at
        LIMIT ${s.limit})
      RETURNING identifier, storage`);
    const deleted = [...rows].map((r) => ({ identifier: r.identifier, storage: r.storage }));
    await s.removeFiles(deleted, async (candidates) => {
      if (candidates.length === 0) return new Set();
      const known = await tx.select({ identifier: uploads.identifier }).from(uploads).where(inArray(uploads.identifier, candidates));
      return new Set(known.map((k) => k.identifier));
    });
    return deleted.map((d) => d.identifier);
  });
}
