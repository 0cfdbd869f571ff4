// When and how long to wait before calling again.

import { Code } from "@connectrpc/connect";
import type { SluiceError } from "./errors.js";

export interface RetryPolicyOptions {
  /** Tries in all, the first included (at least 1). Default 5. */
  maxAttempts?: number;
  /** Default 100 ms. */
  initialBackoffMs?: number;
  /** Default 5000 ms. */
  maxBackoffMs?: number;
  /** Default 2. */
  multiplier?: number;
  /** Up to this fraction of a RetryInfo delay is added to it. Default 0.2. */
  jitter?: number;
  /** Default UNAVAILABLE, ABORTED, RESOURCE_EXHAUSTED. */
  codes?: readonly Code[];
}

const RETRYABLE = [Code.Unavailable, Code.Aborted, Code.ResourceExhausted] as const;

/**
 * Retries of UNAVAILABLE, ABORTED and RESOURCE_EXHAUSTED, bounded in attempts and time.
 *
 * The n-th retry waits a random time between half and all of
 * `min(maxBackoffMs, initialBackoffMs * multiplier ** (n - 1))`; when the gateway sent a
 * google.rpc.RetryInfo, at least its delay instead (plus up to `jitter` of it, so that
 * clients told the same delay do not all come back at once). RESOURCE_EXHAUSTED without a
 * RetryInfo is not retried: the gateway says so when waiting would not help (a request over a
 * size limit, a batch larger than a second's worth of the quota). No retry outlives the
 * call's deadline.
 *
 * Writes are safe to retry: the client sends every Ingest, IngestBatch and DeleteDocument
 * with an idempotency key, the same on each attempt.
 */
export class RetryPolicy {
  readonly maxAttempts: number;
  readonly initialBackoffMs: number;
  readonly maxBackoffMs: number;
  readonly multiplier: number;
  readonly jitter: number;
  readonly codes: ReadonlySet<Code>;

  constructor(options: RetryPolicyOptions = {}) {
    this.maxAttempts = options.maxAttempts ?? 5;
    this.initialBackoffMs = options.initialBackoffMs ?? 100;
    this.maxBackoffMs = options.maxBackoffMs ?? 5000;
    this.multiplier = options.multiplier ?? 2;
    this.jitter = options.jitter ?? 0.2;
    this.codes = new Set(options.codes ?? RETRYABLE);
    if (!(this.maxAttempts >= 1)) throw new RangeError("maxAttempts must be at least 1");
    if (!(this.initialBackoffMs >= 0 && this.maxBackoffMs >= 0 && this.multiplier >= 1 && this.jitter >= 0)) {
      throw new RangeError("backoffs and jitter must not be negative, nor multiplier below 1");
    }
    Object.freeze(this);
  }

  /** Whether a call that failed with `error` on its `attempt`-th try (from 1) goes again. */
  retries(error: SluiceError, attempt: number): boolean {
    if (attempt >= this.maxAttempts || !this.codes.has(error.code)) return false;
    return error.code !== Code.ResourceExhausted || error.retryDelayMs !== undefined;
  }

  /** Milliseconds to wait after the `attempt`-th try failed with `error`. */
  backoffMs(error: SluiceError, attempt: number, rand: () => number = Math.random): number {
    if (error.retryDelayMs !== undefined) return error.retryDelayMs * (1 + this.jitter * rand());
    const cap = Math.min(this.maxBackoffMs, this.initialBackoffMs * this.multiplier ** (attempt - 1));
    return cap / 2 + (cap / 2) * rand();
  }

  /**
   * The wait before the next attempt, or undefined when the call should fail with `error`.
   * `deadline` is on the `performance.now()` clock (undefined: none); a retry that could only
   * start after it is not made.
   */
  nextDelayMs(
    error: SluiceError,
    attempt: number,
    deadline: number | undefined,
    now: () => number = () => performance.now(),
    rand: () => number = Math.random,
  ): number | undefined {
    if (!this.retries(error, attempt)) return undefined;
    const delay = this.backoffMs(error, attempt, rand);
    if (deadline !== undefined && now() + delay >= deadline) return undefined;
    return delay;
  }
}

/** A policy that never retries. */
export const NO_RETRY = new RetryPolicy({ maxAttempts: 1 });

/** Patient by default: a watch outlives gateway restarts (about a minute of trying). */
export const WATCH_RETRY = new RetryPolicy({ maxAttempts: 20, initialBackoffMs: 200, maxBackoffMs: 5000 });

/** The deadline `timeoutMs` from now on the `performance.now()` clock (undefined: none). */
export function deadlineAfter(timeoutMs: number | null | undefined): number | undefined {
  return timeoutMs === undefined || timeoutMs === null ? undefined : performance.now() + timeoutMs;
}

/** Milliseconds left until `deadline` (never negative; undefined: no deadline). */
export function remainingMs(deadline: number | undefined): number | undefined {
  return deadline === undefined ? undefined : Math.max(0, deadline - performance.now());
}
