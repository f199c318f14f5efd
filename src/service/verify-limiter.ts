import { LatchkeyError } from "../domain/errors.js";

/**
 * VerifyLimiter limits failed verifications, because VerifySecret answers "is this the value?" and an unlimited
 * oracle can be guessed against. Each secret and each caller has a token bucket of `perMinute` failures that
 * refills evenly over a minute; a call is refused (resource_exhausted, with a retry hint) while either bucket of it
 * is empty, before the value is even compared. Successful verifications cost nothing.
 *
 * Buckets live in the process: with several replicas, each enforces its own limits.
 */
export interface VerifyLimiter {
  /** Throws resource_exhausted if the secret or the caller has no failures left. */
  check(secretKey: string, callerKey: string): void;
  /** Spends one failure from both buckets. */
  failed(secretKey: string, callerKey: string): void;
}

export interface VerifyLimits {
  /** Failures per minute per secret. */
  readonly perSecret: number;
  /** Failures per minute per caller (a token, or an IP without one). */
  readonly perCaller: number;
}

interface Bucket {
  tokens: number;
  at: number;
}

const MAX_BUCKETS = 50_000;

export function createVerifyLimiter(limits: VerifyLimits, clock: { now(): number } = { now: Date.now }): VerifyLimiter {
  const buckets = new Map<string, Bucket>();

  function refill(key: string, capacity: number): Bucket {
    const now = clock.now();
    let b = buckets.get(key);
    if (!b) {
      if (buckets.size >= MAX_BUCKETS) {
        // Drop the oldest entries (Map keeps insertion order); a full bucket is what a new one is anyway.
        for (const k of [...buckets.keys()].slice(0, MAX_BUCKETS / 10)) buckets.delete(k);
      }
      b = { tokens: capacity, at: now };
      buckets.set(key, b);
      return b;
    }
    b.tokens = Math.min(capacity, b.tokens + ((now - b.at) / 60_000) * capacity);
    b.at = now;
    return b;
  }

  function refuse(what: string, b: Bucket, capacity: number): never {
    const retryAfterSeconds = Math.max(1, Math.ceil(((1 - b.tokens) / capacity) * 60));
    throw new LatchkeyError("resource_exhausted", `too many failed verifications for this ${what}: retry in ${retryAfterSeconds} s`, {
      reason: "VERIFY_RATE_LIMITED",
      retryAfterSeconds,
    });
  }

  return {
    check(secretKey, callerKey) {
      const s = refill(`s\0${secretKey}`, limits.perSecret);
      if (s.tokens < 1) refuse("secret", s, limits.perSecret);
      const c = refill(`c\0${callerKey}`, limits.perCaller);
      if (c.tokens < 1) refuse("caller", c, limits.perCaller);
    },
    failed(secretKey, callerKey) {
      refill(`s\0${secretKey}`, limits.perSecret).tokens -= 1;
      refill(`c\0${callerKey}`, limits.perCaller).tokens -= 1;
    },
  };
}
