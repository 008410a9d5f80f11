import { describe, expect, it } from "vitest";
import { Histogram, HISTOGRAM_MAX_VALUE } from "./histogram.js";

describe("Histogram", () => {
  it("counts values below 256 exactly", () => {
    const h = new Histogram();
    for (let v = 0; v < 256; v++) h.record(v);
    expect(h.count).toBe(256);
    expect(h.percentile(50)).toBe(127);
    expect(h.percentile(100)).toBe(255);
    expect(h.min).toBe(0);
    expect(h.summary().mean).toBeCloseTo(127.5);
  });

  it("reports every value within 1/128 above it, never below", () => {
    for (const v of [256, 257, 1000, 4095, 4096, 123_456, 9_999_999, 2 ** 31 + 12345, HISTOGRAM_MAX_VALUE]) {
      const h = new Histogram();
      h.record(v);
      h.record(0);
      // p100 is the exact maximum; p99 of [0, v] is v's bucket bound, clamped to the max.
      expect(h.percentile(100)).toBe(v);
      const other = new Histogram();
      other.record(v);
      other.record(HISTOGRAM_MAX_VALUE);
      const p50 = other.percentile(50);
      expect(p50).toBeGreaterThanOrEqual(v);
      expect(p50 - v).toBeLessThanOrEqual(v / 128);
    }
  });

  it("finds percentiles of a uniform distribution within the precision", () => {
    const h = new Histogram();
    for (let v = 1; v <= 100_000; v++) h.record(v);
    for (const p of [50, 90, 95, 99, 99.9]) {
      const exact = (p / 100) * 100_000;
      expect(h.percentile(p)).toBeGreaterThanOrEqual(exact);
      expect(h.percentile(p)).toBeLessThanOrEqual(exact * (1 + 1 / 128));
    }
    expect(h.percentile(100)).toBe(100_000);
    expect(h.percentile(0)).toBe(1);
  });

  it("rounds, clamps negatives to 0 and too large values to the maximum", () => {
    const h = new Histogram();
    h.record(2.6);
    h.record(-5);
    h.record(2 ** 40);
    expect(h.min).toBe(0);
    expect(h.max).toBe(HISTOGRAM_MAX_VALUE);
    expect(h.clamped).toBe(1);
    expect(h.percentile(50)).toBe(3);
  });

  it("merges and round-trips through JSON", () => {
    const a = new Histogram();
    const b = new Histogram();
    for (let v = 0; v < 1000; v++) (v % 2 ? a : b).record(v * 37);
    const both = Histogram.fromJSON(JSON.parse(JSON.stringify(a.toJSON()))).merge(b);
    const direct = new Histogram();
    for (let v = 0; v < 1000; v++) direct.record(v * 37);
    expect(both.summary()).toEqual(direct.summary());
    expect(both.count).toBe(1000);
  });

  it("summarizes an empty histogram as zeros and scales units", () => {
    expect(new Histogram().summary().p99).toBe(0);
    const h = new Histogram();
    h.record(1500, 3);
    expect(h.count).toBe(3);
    expect(h.summary(1000).max).toBe(1.5);
  });
});
