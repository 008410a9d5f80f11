#!/usr/bin/env node
import { randomBytes } from "node:crypto";
import { parseArgs } from "node:util";
import { PROTOCOL_NAMES, type ProtocolName } from "./protocols/index.js";
import { runLoad, type LoadResult } from "./run.js";

const USAGE = `Usage: node apps/loadgen/dist/cli.js --urls ws://127.0.0.1:8000,ws://127.0.0.1:8001 [options]

Open-loop load against running nodes: P pairs, each user on a different node than its partner,
sending to each other at a total rate R. Prints delivery latency (from the scheduled send time),
loss, duplicates, order, notification latency and the generator's own CPU share.

  --urls LIST           node base URLs, comma-separated (required)
  --protocol NAME       chat (ours, default) or socket.io (the baseline)
  --secret S            HS256 token secret (default: CHAT_JWT_SECRET, else the development secret)
  --rate R              messages per second, all senders together (default 2000)
  --pairs P             user pairs (default 200)
  --duration S          timed seconds (default 20)
  --warmup S            untimed seconds before (default 2)
  --drain S             seconds to wait for stragglers (default 3)
  --message-bytes N     message text length (default 64)
  --threads N           generator threads (default 1)
  --no-notifications    do not open notification sockets
  --json                print the full result as JSON
`;

const { values } = parseArgs({
  options: {
    urls: { type: "string" },
    protocol: { type: "string", default: "chat" },
    secret: { type: "string" },
    rate: { type: "string", default: "2000" },
    pairs: { type: "string", default: "200" },
    duration: { type: "string", default: "20" },
    warmup: { type: "string", default: "2" },
    drain: { type: "string", default: "3" },
    "message-bytes": { type: "string", default: "64" },
    threads: { type: "string", default: "1" },
    "no-notifications": { type: "boolean", default: false },
    json: { type: "boolean", default: false },
    help: { type: "boolean", default: false },
  },
});

function positive(name: string, raw: string | undefined, integer = true): number {
  const n = Number(raw);
  if (!Number.isFinite(n) || n < 0 || (integer && !Number.isInteger(n))) {
    process.stderr.write(`--${name}: expected a ${integer ? "whole " : ""}number ≥ 0, got ${raw}\n`);
    process.exit(2);
  }
  return n;
}

if (values.help || !values.urls) {
  process.stdout.write(USAGE);
  process.exit(values.help ? 0 : 2);
}
const protocol = values.protocol as ProtocolName;
if (!PROTOCOL_NAMES.includes(protocol)) {
  process.stderr.write(`--protocol: one of ${PROTOCOL_NAMES.join(", ")}\n`);
  process.exit(2);
}
// The gateway's development secret (NODE_ENV=development without CHAT_JWT_SECRET).
const DEVELOPMENT_SECRET = "chat-cluster-development-secret-never-use-in-production";

const result = await runLoad({
  protocol,
  urls: values.urls.split(",").map((u) => u.trim().replace(/\/$/, "")),
  secret: values.secret ?? process.env["CHAT_JWT_SECRET"] ?? DEVELOPMENT_SECRET,
  userPrefix: `lg_${randomBytes(3).toString("hex")}_`,
  pairs: positive("pairs", values.pairs),
  rate: positive("rate", values.rate, false),
  durationMs: positive("duration", values.duration, false) * 1000,
  warmupMs: positive("warmup", values.warmup, false) * 1000,
  drainMs: positive("drain", values.drain, false) * 1000,
  messageBytes: positive("message-bytes", values["message-bytes"]),
  notifications: !values["no-notifications"],
  threads: positive("threads", values.threads),
  connectConcurrency: 64,
  connectTimeoutMs: 10000,
}).catch((err: unknown) => {
  process.stderr.write(`load run failed: ${(err as Error).message}\n`);
  process.exit(1);
});

if (values.json) {
  process.stdout.write(JSON.stringify(result, null, 2) + "\n");
} else {
  process.stdout.write(formatResult(result) + "\n");
}

function formatResult(r: LoadResult): string {
  const ms = (v: number) => `${v.toFixed(2)} ms`;
  const l = r.latencyMs;
  const lines = [
    `${r.protocol}: ${r.pairs} pairs, offered ${r.offeredRate} msg/s, achieved ${r.achievedRate.toFixed(0)} msg/s over ${r.durationMs / 1000} s`,
    `delivery   p50 ${ms(l.p50)}  p95 ${ms(l.p95)}  p99 ${ms(l.p99)}  max ${ms(l.max)}  (${l.count} timed)`,
    `accounting sent ${r.delivery.sent}  received ${r.delivery.received}  lost ${r.delivery.lost} (${r.delivery.lossPct.toFixed(3)} %)  duplicates ${r.delivery.duplicates}  out of order ${r.delivery.outOfOrder}  refused ${r.refused}`,
  ];
  if (r.notifications) {
    const n = r.notifications.latencyMs;
    lines.push(
      `notify     p50 ${ms(n.p50)}  p95 ${ms(n.p95)}  p99 ${ms(n.p99)}  max ${ms(n.max)}  (${r.notifications.received}/${r.notifications.expected})`,
      `persist    accepted → committed p50 ${ms(r.notifications.persistLagMs.p50)}  p99 ${ms(r.notifications.persistLagMs.p99)}`,
    );
  }
  lines.push(
    `generator  ${(r.generator.coreShare * 100).toFixed(0)} % of a core, event loop ${(r.generator.maxEventLoopUtilization * 100).toFixed(0)} % busy, send lag p99 ${ms(r.sendLagMs.p99)}${r.generator.saturated ? "  SATURATED: these figures measure the generator" : ""}`,
  );
  return lines.join("\n");
}
