import { describe, expect, it } from "vitest";
import { EnvelopeDecodeError, decodeEnvelope, encodeEnvelope } from "./envelope.js";
import { streamPosition } from "./message-log.js";

describe("envelope", () => {
  it("round-trips frames, keeping their bytes and order", () => {
    const frames = [JSON.stringify({ type: "a", text: "multi\nline é" }), JSON.stringify({ type: "b" })];
    const env = decodeEnvelope(Buffer.from(encodeEnvelope("node-1", "c:bob", frames)));
    expect(env.origin).toBe("node-1");
    expect(env.target).toBe("c:bob");
    expect(Math.abs(env.sentAt - Date.now())).toBeLessThan(5000);
    expect(env.frames.map((f) => f.toString())).toEqual(frames);
  });

  it.each(["", "no header", "origin\ttarget\t1", "\ttarget\t1\n{}", "origin\n{}", "origin\ttarget\n{}", "o\tt\tnot-a-time\n{}"])("refuses %j", (raw) => {
    expect(() => decodeEnvelope(Buffer.from(raw))).toThrow(EnvelopeDecodeError);
  });
});

describe("stream positions", () => {
  it("orders like stream ids", () => {
    const ids = ["1-0", "1-1", "1-999999", "2-0", "1700000000000-5"];
    const positions = ids.map(streamPosition);
    expect([...positions].sort((a, b) => (a < b ? -1 : 1))).toEqual(positions);
  });
});
