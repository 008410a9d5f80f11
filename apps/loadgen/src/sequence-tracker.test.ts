import { describe, expect, it } from "vitest";
import { addCounts, emptyCounts, SequenceTracker } from "./sequence-tracker.js";

function sent(n: number): SequenceTracker {
  const t = new SequenceTracker();
  for (let i = 0; i < n; i++) t.sent();
  return t;
}

describe("SequenceTracker", () => {
  it("counts an in-order stream as complete, with no loss", () => {
    const t = sent(5);
    expect([0, 1, 2, 3, 4].map((s) => t.record(s))).toEqual(Array(5).fill("in_order"));
    expect(t.complete).toBe(true);
    expect(t.counts()).toEqual({ sent: 5, received: 5, lost: 0, duplicates: 0, outOfOrder: 0, unknown: 0 });
  });

  it("counts gaps as loss until they arrive, and late arrivals as out of order", () => {
    const t = sent(6);
    t.record(0);
    t.record(2);
    t.record(5);
    expect(t.counts().lost).toBe(3);
    expect(t.complete).toBe(false);
    expect(t.record(1)).toBe("out_of_order");
    expect(t.record(4)).toBe("out_of_order");
    expect(t.counts()).toMatchObject({ received: 5, lost: 1, outOfOrder: 2, duplicates: 0 });
  });

  it("counts a repeat as a duplicate, not as a delivery", () => {
    const t = sent(3);
    t.record(0);
    t.record(1);
    expect(t.record(1)).toBe("duplicate");
    expect(t.record(0)).toBe("duplicate");
    t.record(2);
    expect(t.counts()).toMatchObject({ received: 3, lost: 0, duplicates: 2, outOfOrder: 0 });
  });

  it("rejects sequence numbers never sent", () => {
    const t = sent(2);
    expect(t.record(2)).toBe("unknown");
    expect(t.record(-1)).toBe("unknown");
    expect(t.record(0.5)).toBe("unknown");
    expect(t.counts()).toMatchObject({ received: 0, lost: 2, unknown: 3 });
  });

  it("grows past its initial bitmap", () => {
    const t = sent(100_000);
    for (let s = 99_999; s >= 0; s--) t.record(s);
    expect(t.counts()).toMatchObject({ received: 100_000, lost: 0, outOfOrder: 99_999 });
    expect(t.record(70_000)).toBe("duplicate");
  });

  it("sums several streams", () => {
    const a = sent(3);
    const b = sent(2);
    a.record(0);
    a.record(0);
    b.record(1);
    b.record(0);
    const total = addCounts(addCounts(emptyCounts(), a.counts()), b.counts());
    expect(total).toEqual({ sent: 5, received: 3, lost: 2, duplicates: 1, outOfOrder: 1, unknown: 0 });
  });
});
