// Pairs of users exchanging messages at a constant arrival rate of new pairs; send-to-deliver latency
// from the send time carried in client_id, loss per message. See k6/README.md for the run lines.
import { chatPair } from "./lib/chat-pair.js";
import { gateways, numberSetting, scenarioGateways, setting } from "./lib/config.js";
import { arrivalRatePerGateway } from "./lib/scenarios.js";

const sessionSeconds = numberSetting("SESSION_SECONDS", 30);
const pairsPerSecond = numberSetting("PAIRS_PER_SECOND", 10);
// Pairs alive at once: arrival rate x session length (plus connect and drain time).
const concurrentPairs = Math.ceil(pairsPerSecond * (sessionSeconds + 5));

/** @type {import("k6/options").Options} */
export const options = {
  scenarios: arrivalRatePerGateway(gateways, {
    rate: pairsPerSecond,
    timeUnit: "1s",
    duration: setting("DURATION", "2m"),
    preAllocatedVUs: concurrentPairs,
    maxVUs: concurrentPairs * 2,
    gracefulStop: `${sessionSeconds + 15}s`,
  }),
  thresholds: {
    chat_send_to_deliver: [`p(95)<${setting("P95_MS", "250")}`, `p(99)<${setting("P99_MS", "1000")}`],
    chat_send_to_echo: [`p(95)<${setting("P95_MS", "250")}`, `p(99)<${setting("P99_MS", "1000")}`],
    chat_message_lost: [`rate<${setting("MAX_LOSS", "0.001")}`],
    chat_session_failed: [`rate<${setting("MAX_SESSION_FAILURES", "0.01")}`],
    chat_duplicates: ["count==0"],
  },
};

export default function () {
  chatPair({
    ...scenarioGateways(),
    sessionSeconds,
    intervalMs: numberSetting("MESSAGE_INTERVAL_MS", 1000),
    drainMs: numberSetting("DRAIN_MS", 3000),
    messageBytes: numberSetting("MESSAGE_BYTES", 64),
  });
}
