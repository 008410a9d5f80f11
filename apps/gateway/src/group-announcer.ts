import { ALL, removedTarget, type RedisNames } from "@chat/bus";
import { groupConversation, type GroupChange } from "@chat/db";
import { groupEventFrame } from "./api/serialize.js";

/** Publishes server frames on a channel, to a target (GatewayCore.publish). */
export type Publish = (channel: string, frames: readonly string[], target?: string) => Promise<void>;

/**
 * Tells the sockets concerned about a committed group change, while the change's locks are held (so
 * a removed member's unread total goes out in order with the worker's):
 * - the group's chat sockets, on every node, get the `group_event`;
 * - a member who left or was removed has their sockets of the group closed with 4003 (chat sockets
 *   over the group's channel, its notification sockets over their own), and their all-conversations
 *   sockets get their new unread total.
 */
export async function announceGroupChange(names: RedisNames, publish: Publish, change: GroupChange): Promise<void> {
  const event = change.event;
  if (event === null) return;
  const conversation = groupConversation(change.group.id);
  const room = names.roomChannel(conversation);
  const frame = groupEventFrame(change.group.id, event);
  await publish(room, [frame], ALL);
  const removed = change.removed;
  if (removed === null) return;
  await publish(room, [frame], removedTarget(removed.user));
  const userChannel = names.userChannel(removed.user);
  await publish(userChannel, [frame], removedTarget(conversation));
  await publish(userChannel, [JSON.stringify({ type: "unread_count", unread_count: removed.total })], ALL);
}
