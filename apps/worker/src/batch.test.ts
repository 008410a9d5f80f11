import { describe, expect, it } from "vitest";
import { receivedEntry, type ReceivedEntry } from "@chat/bus";
import { splitByUsers } from "./batch.js";

let seq = 0;
const message = (from: string, to: string): ReceivedEntry =>
  receivedEntry(
    `1-${++seq}`,
    JSON.stringify({ kind: "message", id: `00000000-0000-7000-8000-${String(seq).padStart(12, "0")}`, from, to, message: "m", multimedia_url: null, date_added: "2026-11-26T07:00:00.000Z" }),
  );
const read = (reader: string, other: string): ReceivedEntry => receivedEntry(`1-${++seq}`, JSON.stringify({ kind: "read", reader, other }));
const poison = (): ReceivedEntry => receivedEntry(`1-${++seq}`, "{not json");

const usersIn = (entries: readonly ReceivedEntry[]) =>
  new Set(entries.flatMap((e) => (e.entry?.kind === "message" ? [e.entry.from, e.entry.to] : e.entry ? [e.entry.reader, e.entry.other] : [])));
const ids = (entries: readonly ReceivedEntry[]) => entries.map((e) => e.streamId);

describe("splitByUsers", () => {
  it("puts conversations of different users in different groups, each in stream order, and balances them", () => {
    const entries = [message("a", "b"), message("c", "d"), message("b", "a"), message("e", "f"), read("d", "c"), message("g", "h")];
    const { groups, rest } = splitByUsers(entries, 2);
    expect(rest).toEqual([]);
    expect(groups).toHaveLength(2);
    expect(groups.map((g) => g.length).sort()).toEqual([3, 3]);
    const [first, second] = groups.map(usersIn);
    for (const u of first!) expect(second!.has(u), `user ${u} in both groups`).toBe(false);
    // Stream order within each group: the stream ids ascend.
    for (const g of groups) expect(ids(g)).toEqual([...ids(g)].sort((x, y) => Number(x.split("-")[1]) - Number(y.split("-")[1])));
    expect(new Set(groups.flat())).toEqual(new Set(entries));
  });

  it("defers an entry that joins two groups, and every later entry of its users, keeping their order", () => {
    const ab = message("a", "b");
    const cd = message("c", "d");
    const bridge = message("b", "c");
    const afterB = message("a", "b");
    const afterC = read("c", "d");
    const unrelated = message("x", "y");
    const { groups, rest } = splitByUsers([ab, cd, bridge, afterB, afterC, unrelated], 2);
    expect(rest).toEqual([bridge, afterB, afterC]);
    expect(groups.flat()).toContain(unrelated);
    expect(new Set(groups.flat())).toEqual(new Set([ab, cd, unrelated]));
  });

  it("sends poison entries to the rest and keeps everything in one group when all entries share a user", () => {
    const bad = poison();
    const entries = [message("a", "b"), message("a", "c"), bad, message("d", "a")];
    const { groups, rest } = splitByUsers(entries, 4);
    expect(groups).toEqual([[entries[0], entries[1], entries[3]]]);
    expect(rest).toEqual([bad]);
  });
});
