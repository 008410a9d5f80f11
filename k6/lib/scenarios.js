/**
 * One scenario per gateway URL (STYLE: generated from a list), without k6 imports. Each scenario
 * gets its share of the rate and of the VUs, and GATEWAY_INDEX in its environment.
 */

/**
 * `total` split over `n` parts as evenly as integers allow; part `i`.
 * @param {number} total
 * @param {number} n
 * @param {number} i
 */
export function share(total, n, i) {
  return Math.floor(total / n) + (i < total % n ? 1 : 0);
}

/**
 * @param {string[]} gateways
 * @param {{ rate: number, timeUnit: string, duration: string, preAllocatedVUs: number, maxVUs: number, exec?: string, startTime?: string, gracefulStop?: string }} base
 * @returns {Record<string, import("k6/options").ConstantArrivalRateScenario>}
 */
export function arrivalRatePerGateway(gateways, base) {
  /** @type {Record<string, import("k6/options").ConstantArrivalRateScenario>} */
  const scenarios = {};
  gateways.forEach((_url, i) => {
    const rate = share(base.rate, gateways.length, i);
    if (rate === 0) return;
    scenarios[`${base.exec ?? "default"}_gateway_${i}`] = {
      ...base,
      executor: "constant-arrival-rate",
      rate,
      preAllocatedVUs: Math.max(1, share(base.preAllocatedVUs, gateways.length, i)),
      maxVUs: Math.max(1, share(base.maxVUs, gateways.length, i)),
      env: { GATEWAY_INDEX: String(i) },
    };
  });
  return scenarios;
}
