import { listMessages, messageById, type Db } from "@chat/db";
import { historyItem } from "./serialize.js";
import { ApiError, json, parseLimit, type ApiRequest, type ApiResponse } from "./types.js";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/**
 * One keyset page of a conversation's history, as /api/rooms/{username}/messages and
 * /api/groups/{id}/messages answer it: `before` or `after` a message of this conversation (another
 * conversation's message is "not found": its existence is not the caller's to learn), `limit` items,
 * each with who read it from `readPositions`.
 */
export async function historyPage(db: Db, roomId: string, req: ApiRequest, readPositions: Promise<ReadonlyMap<string, bigint>>): Promise<ApiResponse> {
  const limit = parseLimit(req.query, 50, 200);
  const before = req.query.get("before");
  const after = req.query.get("after");
  if (before && after) throw new ApiError(400, "invalid_cursor", "give before or after, not both");
  const pivotId = before || after;
  let pivot: bigint | undefined;
  if (pivotId) {
    if (!UUID.test(pivotId)) throw new ApiError(400, "invalid_cursor", `${before ? "before" : "after"} must be a message id`);
    const row = await messageById(db, pivotId);
    if (!row || row.roomId !== roomId) throw new ApiError(404, "cursor_not_found", "no such message in this conversation");
    pivot = row.streamPosition;
  }
  const [rows, reads] = await Promise.all([
    listMessages(db, roomId, { limit: limit + 1, before: before ? pivot : undefined, after: after ? pivot : undefined }),
    readPositions,
  ]);
  const page = rows.slice(0, limit);
  return json(200, { messages: page.map((row) => historyItem(row, reads)), next_cursor: rows.length > limit ? page.at(-1)!.id : null });
}
