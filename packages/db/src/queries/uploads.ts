import { eq } from "drizzle-orm";
import type { Db } from "../client.js";
import { uploads } from "../schema.js";

export type UploadRow = typeof uploads.$inferSelect;

export async function insertUpload(db: Db, row: Omit<UploadRow, "createdAt">): Promise<void> {
  await db.insert(uploads).values(row);
}

export async function uploadById(db: Db, identifier: string): Promise<UploadRow | undefined> {
  const [row] = await db.select().from(uploads).where(eq(uploads.identifier, identifier)).limit(1);
  return row;
}
