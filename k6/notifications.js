// Unread counts and new-message notifications: a sender writes, the reader's two notification sockets
// must show every message with the exact count, then reading drops both counts to 0.
import { gateways, numberSetting, scenarioGateways, setting } from "./lib/config.js";
import { notificationsFlow } from "./lib/notifications-flow.js";
import { arrivalRatePerGateway } from "./lib/scenarios.js";

const messages = numberSetting("MESSAGES", 5);
const intervalMs = numberSetting("MESSAGE_INTERVAL_MS", 500);
const settleMs = numberSetting("SETTLE_MS", 10000);
const flowsPerSecond = numberSetting("FLOWS_PER_SECOND", 5);
const concurrent = Math.ceil(flowsPerSecond * ((messages * intervalMs + settleMs) / 1000 + 5));

/** @type {import("k6/options").Options} */
export const options = {
  scenarios: arrivalRatePerGateway(gateways, {
    rate: flowsPerSecond,
    timeUnit: "1s",
    duration: setting("DURATION", "2m"),
    preAllocatedVUs: concurrent,
    maxVUs: concurrent * 2,
    gracefulStop: `${Math.ceil((messages * intervalMs + settleMs) / 1000) + 15}s`,
  }),
  thresholds: {
    notify_new_message: [`p(95)<${setting("P95_MS", "500")}`, `p(99)<${setting("P99_MS", "2000")}`],
    notify_conversation_count: [`p(95)<${setting("P95_MS", "500")}`, `p(99)<${setting("P99_MS", "2000")}`],
    notify_read_to_zero: [`p(95)<${setting("P95_MS", "500")}`],
    notify_count_exact: ["rate==1"],
    notify_lost: [`rate<${setting("MAX_LOSS", "0.001")}`],
    notify_flow_failed: [`rate<${setting("MAX_SESSION_FAILURES", "0.01")}`],
  },
};

export default function () {
  notificationsFlow({ ...scenarioGateways(), messages, intervalMs, settleMs, messageBytes: numberSetting("MESSAGE_BYTES", 64) });
}
