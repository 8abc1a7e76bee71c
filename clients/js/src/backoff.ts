/** Reconnect delays: exponential backoff with full jitter (a uniform pick in [0, cap)). */

export interface BackoffOptions {
  /** Upper bound of the first retry's delay, in ms. */
  minDelayMs: number;
  /** Upper bound of every delay, in ms. */
  maxDelayMs: number;
}

export function backoffDelay(attempt: number, options: BackoffOptions, random: () => number): number {
  const cap = Math.min(options.maxDelayMs, options.minDelayMs * 2 ** Math.min(attempt, 30));
  return random() * cap;
}
