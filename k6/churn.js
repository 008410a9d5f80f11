// Connection churn: sockets opened at a constant rate on a small pool of users, held briefly, closed.
// Measures upgrade + auth + subscription + presence time to the first event, and failures.
import { churnConnection } from "./lib/churn-connection.js";
import { gateways, numberSetting, scenarioGateways, setting } from "./lib/config.js";
import { arrivalRatePerGateway } from "./lib/scenarios.js";

const connectsPerSecond = numberSetting("CONNECTS_PER_SECOND", 50);
const holdMinMs = numberSetting("HOLD_MIN_MS", 1000);
const holdMaxMs = numberSetting("HOLD_MAX_MS", 10000);
const concurrent = Math.ceil((connectsPerSecond * (holdMaxMs + 2000)) / 1000);

/** @type {import("k6/options").Options} */
export const options = {
  scenarios: arrivalRatePerGateway(gateways, {
    rate: connectsPerSecond,
    timeUnit: "1s",
    duration: setting("DURATION", "2m"),
    preAllocatedVUs: concurrent,
    maxVUs: concurrent * 2,
    gracefulStop: `${Math.ceil(holdMaxMs / 1000) + 15}s`,
  }),
  thresholds: {
    churn_connect_to_first_event: [`p(95)<${setting("P95_MS", "500")}`, `p(99)<${setting("P99_MS", "2000")}`],
    churn_connect_failed: [`rate<${setting("MAX_CONNECT_FAILURES", "0.01")}`],
  },
};

export default function () {
  churnConnection({ base: scenarioGateways().home, poolSize: numberSetting("POOL_SIZE", 200), holdMinMs, holdMaxMs });
}
