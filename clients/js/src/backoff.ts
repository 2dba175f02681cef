export interface BackoffOptions {
  /** Upper bound of the first retry delay, in ms. Default 500. */
  initialMs?: number;
  /** Upper bound of any retry delay, in ms. Default 30000. */
  maxMs?: number;
  /** Growth per attempt. Default 2. */
  factor?: number;
}

/**
 * Exponential backoff with full jitter (AWS architecture blog, "Exponential
 * Backoff And Jitter"): the delay of attempt n (from 0) is uniform in
 * [0, min(maxMs, initialMs * factor^n)].
 */
export function backoffDelay(
  attempt: number,
  opts: BackoffOptions = {},
  random: () => number = Math.random,
): number {
  const initial = Math.max(0, opts.initialMs ?? 500);
  const max = Math.max(initial, opts.maxMs ?? 30_000);
  const factor = Math.max(1, opts.factor ?? 2);
  const cap = Math.min(max, initial * Math.pow(factor, Math.max(0, Math.min(attempt, 64))));
  return Math.floor(random() * cap);
}
