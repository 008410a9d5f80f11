import { presenceMemberUser, type Presence, type PresenceEntry } from "./bus.js";

/** Presence of one process: room -> member -> expiry (ms). Same guarantees as RedisPresence. */
export class MemoryPresence implements Presence {
  private readonly rooms = new Map<string, Map<string, number>>();

  constructor(
    readonly ttlMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  async join(e: PresenceEntry): Promise<{ first: boolean; users: string[] }> {
    let room = this.rooms.get(e.roomId);
    if (!room) this.rooms.set(e.roomId, (room = new Map()));
    const first = !this.hasUser(room, e.user);
    room.set(e.member, this.now() + this.ttlMs);
    return { first, users: [...new Set([...room.keys()].map(presenceMemberUser))] };
  }

  async leave(e: PresenceEntry): Promise<{ last: boolean }> {
    const room = this.rooms.get(e.roomId);
    if (!room?.delete(e.member)) return { last: false };
    if (room.size === 0) this.rooms.delete(e.roomId);
    return { last: !this.hasUser(room, e.user) };
  }

  async refresh(entries: readonly PresenceEntry[]): Promise<void> {
    const expiry = this.now() + this.ttlMs;
    for (const e of entries) {
      const room = this.rooms.get(e.roomId);
      if (room?.has(e.member)) room.set(e.member, expiry);
    }
  }

  async sweepExpired(limit = 200): Promise<{ roomId: string; user: string }[]> {
    const now = this.now();
    const left: { roomId: string; user: string }[] = [];
    for (const [roomId, room] of this.rooms) {
      for (const [member, expiry] of room) {
        if (expiry > now) continue;
        const user = presenceMemberUser(member);
        room.delete(member);
        if (!this.hasUser(room, user)) left.push({ roomId, user });
        if (left.length >= limit) break;
      }
      if (room.size === 0) this.rooms.delete(roomId);
      if (left.length >= limit) break;
    }
    return left;
  }

  private hasUser(room: Map<string, number>, user: string): boolean {
    for (const member of room.keys()) if (presenceMemberUser(member) === user) return true;
    return false;
  }
}
