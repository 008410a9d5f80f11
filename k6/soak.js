// Soak: a moderate mix of chat pairs, notification flows and churn for hours (SOAK_DURATION, 2h by
// default), with the same thresholds as the short scripts. Watch the gateways' memory and the
// worker's stream lag on /metrics while it runs (infra/README.md, "Metrics").
import { chatPair } from "./lib/chat-pair.js";
import { churnConnection } from "./lib/churn-connection.js";
import { gateways, numberSetting, scenarioGateways, setting } from "./lib/config.js";
import { notificationsFlow } from "./lib/notifications-flow.js";
import { arrivalRatePerGateway } from "./lib/scenarios.js";

const duration = setting("SOAK_DURATION", "2h");
const sessionSeconds = numberSetting("SESSION_SECONDS", 120);
const pairsPerSecond = numberSetting("PAIRS_PER_SECOND", 2);
const flowsPerSecond = numberSetting("FLOWS_PER_SECOND", 1);
const connectsPerSecond = numberSetting("CONNECTS_PER_SECOND", 5);
const pairs = Math.ceil(pairsPerSecond * (sessionSeconds + 5));

/** @type {import("k6/options").Options} */
export const options = {
  scenarios: {
    ...arrivalRatePerGateway(gateways, {
      exec: "chat",
      rate: pairsPerSecond,
      timeUnit: "1s",
      duration,
      preAllocatedVUs: pairs,
      maxVUs: pairs * 2,
      gracefulStop: `${sessionSeconds + 15}s`,
    }),
    ...arrivalRatePerGateway(gateways, {
      exec: "notifications",
      rate: flowsPerSecond,
      timeUnit: "1s",
      duration,
      preAllocatedVUs: flowsPerSecond * 20,
      maxVUs: flowsPerSecond * 40,
      gracefulStop: "30s",
    }),
    ...arrivalRatePerGateway(gateways, {
      exec: "churn",
      rate: connectsPerSecond,
      timeUnit: "1s",
      duration,
      preAllocatedVUs: connectsPerSecond * 12,
      maxVUs: connectsPerSecond * 24,
      gracefulStop: "30s",
    }),
  },
  thresholds: {
    chat_send_to_deliver: [`p(95)<${setting("P95_MS", "250")}`, `p(99)<${setting("P99_MS", "1000")}`],
    chat_message_lost: [`rate<${setting("MAX_LOSS", "0.001")}`],
    chat_session_failed: ["rate<0.01"],
    notify_new_message: [`p(99)<${setting("P99_MS", "1000")}`],
    notify_count_exact: ["rate==1"],
    notify_lost: [`rate<${setting("MAX_LOSS", "0.001")}`],
    churn_connect_to_first_event: [`p(99)<${setting("P99_MS", "1000")}`],
    churn_connect_failed: ["rate<0.01"],
  },
};

export function chat() {
  chatPair({ ...scenarioGateways(), sessionSeconds, intervalMs: 2000, drainMs: 3000, messageBytes: 64 });
}

export function notifications() {
  notificationsFlow({ ...scenarioGateways(), messages: 5, intervalMs: 500, settleMs: 10000, messageBytes: 64 });
}

export function churn() {
  churnConnection({ base: scenarioGateways().home, poolSize: 500, holdMinMs: 2000, holdMaxMs: 20000 });
}
