import { describe, expect, it } from "vitest";
import { decodeClientId, encodeClientId } from "./client-id.js";

describe("client_id", () => {
  it("round-trips the sequence and the scheduled time in µs", () => {
    const id = encodeClientId(42, 123_456_789.4);
    expect(id).toBe("42.123456789");
    expect(decodeClientId(id)).toEqual({ seq: 42, scheduledUs: 123_456_789 });
    expect(id.length).toBeLessThanOrEqual(128);
  });

  it("refuses anything else", () => {
    for (const bad of [undefined, 7, "", "c-42", ".5", "3.", "x.5", "-1.5", "1.5.x"]) expect(decodeClientId(bad)).toBeUndefined();
  });
});
