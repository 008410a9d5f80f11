/**
 * A log-linear histogram of non-negative integers, laid out like HdrHistogram: values below 256 are
 * counted exactly; above, every power-of-two range [2^e, 2^(e+1)) is split into 128 equal buckets,
 * so a reported value is never more than 1/128 (0.8 %) above the recorded one. Values are whatever
 * unit the caller records (the load generator uses microseconds); the largest is 2^32 - 1 (71 min
 * in µs), larger ones are clamped to it and counted in `clamped`.
 */
const SUB_BITS = 7;
const SUB = 1 << SUB_BITS; // buckets per octave
const EXACT = SUB * 2; // values below this have a bucket each
const MAX_EXP = 31;
const BUCKETS = EXACT + (MAX_EXP - SUB_BITS) * SUB;
export const HISTOGRAM_MAX_VALUE = 2 ** 32 - 1;

function indexOf(value: number): number {
  if (value < EXACT) return value;
  const e = 31 - Math.clz32(value);
  return EXACT + (e - SUB_BITS - 1) * SUB + ((value >>> (e - SUB_BITS)) - SUB);
}

/** Lowest and highest value counted in bucket `index`. */
function boundsOf(index: number): [number, number] {
  if (index < EXACT) return [index, index];
  const k = index - EXACT;
  const e = Math.floor(k / SUB) + SUB_BITS + 1;
  const width = 2 ** (e - SUB_BITS);
  const low = ((k % SUB) + SUB) * width;
  return [low, low + width - 1];
}

/** Summary of a histogram in the caller's unit. */
export interface HistogramSummary {
  count: number;
  min: number;
  mean: number;
  p50: number;
  p90: number;
  p95: number;
  p99: number;
  p999: number;
  max: number;
}

/** The serialized form: non-empty buckets as [index, count] pairs. */
export interface HistogramJson {
  buckets: [number, number][];
  min: number;
  max: number;
  sum: number;
  count: number;
  clamped: number;
}

export class Histogram {
  private readonly counts = new Float64Array(BUCKETS);
  count = 0;
  sum = 0;
  min = Infinity;
  max = 0;
  /** Values above HISTOGRAM_MAX_VALUE, recorded as that value. */
  clamped = 0;

  /** Records `value` (rounded to an integer; negatives count as 0) `times` times. */
  record(value: number, times = 1): void {
    let v = Number.isFinite(value) ? Math.round(value) : HISTOGRAM_MAX_VALUE;
    if (v < 0) v = 0;
    if (v > HISTOGRAM_MAX_VALUE) {
      v = HISTOGRAM_MAX_VALUE;
      this.clamped += times;
    }
    this.counts[indexOf(v)]! += times;
    this.count += times;
    this.sum += v * times;
    if (v < this.min) this.min = v;
    if (v > this.max) this.max = v;
  }

  /**
   * The value at percentile `p` (0..100): the highest value of the bucket holding the
   * ceil(p% of count)-th smallest recorded value, never above the exact maximum. 0 when empty.
   */
  percentile(p: number): number {
    if (this.count === 0) return 0;
    const rank = Math.max(1, Math.ceil((Math.min(100, Math.max(0, p)) / 100) * this.count));
    let seen = 0;
    for (let i = 0; i < BUCKETS; i++) {
      seen += this.counts[i]!;
      if (seen >= rank) return Math.min(boundsOf(i)[1], this.max);
    }
    return this.max;
  }

  merge(other: Histogram): this {
    for (let i = 0; i < BUCKETS; i++) this.counts[i]! += other.counts[i]!;
    this.count += other.count;
    this.sum += other.sum;
    this.clamped += other.clamped;
    if (other.min < this.min) this.min = other.min;
    if (other.max > this.max) this.max = other.max;
    return this;
  }

  /** Count, min, mean, percentiles and max, each divided by `scale` (1000 turns µs into ms). */
  summary(scale = 1): HistogramSummary {
    const s = (v: number) => v / scale;
    return {
      count: this.count,
      min: this.count ? s(this.min) : 0,
      mean: this.count ? s(this.sum / this.count) : 0,
      p50: s(this.percentile(50)),
      p90: s(this.percentile(90)),
      p95: s(this.percentile(95)),
      p99: s(this.percentile(99)),
      p999: s(this.percentile(99.9)),
      max: s(this.max),
    };
  }

  toJSON(): HistogramJson {
    const buckets: [number, number][] = [];
    for (let i = 0; i < BUCKETS; i++) if (this.counts[i]) buckets.push([i, this.counts[i]!]);
    return { buckets, min: this.count ? this.min : 0, max: this.max, sum: this.sum, count: this.count, clamped: this.clamped };
  }

  static fromJSON(json: HistogramJson): Histogram {
    const h = new Histogram();
    for (const [i, c] of json.buckets) h.counts[i] = c;
    h.count = json.count;
    h.sum = json.sum;
    h.min = json.count ? json.min : Infinity;
    h.max = json.max;
    h.clamped = json.clamped;
    return h;
  }
}
