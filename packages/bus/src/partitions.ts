import calculateSlot from "cluster-key-slot";

/** Hash slots of a Redis Cluster. */
export const CLUSTER_SLOTS = 16384;

/** Most partitions CHAT_PARTITIONS allows: tags are searched once at start-up, in about N * N slot computations. */
export const MAX_PARTITIONS = 1024;

/** The Redis Cluster hash slot of a key or channel (a `{tag}` in it decides, as in Redis). */
export const slotOf = (key: string): number => calculateSlot(key);

/**
 * The hash tag of each of `n` partitions: tag i is the first `p<i>.<k>` whose slot lies in the i-th of
 * n equal slot ranges. A cluster whose masters hold equal slot ranges (what `redis-cli --cluster
 * create` and rebalance produce) then holds an equal share of the partitions on each master, which
 * hashing `p<i>` alone does not give (16 random slots over 3 masters are often 8/5/3).
 */
export function partitionTags(n: number): string[] {
  if (!Number.isInteger(n) || n < 1 || n > MAX_PARTITIONS) throw new RangeError(`partitions must be an integer from 1 to ${MAX_PARTITIONS}, not ${n}`);
  const tags: string[] = [];
  for (let i = 0; i < n; i++) {
    const low = Math.floor((i * CLUSTER_SLOTS) / n);
    const high = Math.floor(((i + 1) * CLUSTER_SLOTS) / n);
    for (let k = 0; ; k++) {
      const tag = `p${i}.${k}`;
      const slot = slotOf(tag);
      if (slot >= low && slot < high) {
        tags.push(tag);
        break;
      }
    }
  }
  return tags;
}

/**
 * The partition of a conversation: FNV-1a (32 bit) of its id, modulo n. Stable across versions and
 * processes: every gateway and worker must agree on it, so it never changes for a given n.
 */
export function partitionOf(conversationId: string, n: number): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < conversationId.length; i++) {
    h ^= conversationId.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return (h >>> 0) % n;
}
