"""When and how long to wait before calling again."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from ._errors import SluiceError

_RETRYABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of UNAVAILABLE, ABORTED and RESOURCE_EXHAUSTED, bounded in attempts and time.

    The n-th retry waits a random time between half and all of
    ``min(max_backoff, initial_backoff * multiplier ** (n - 1))`` seconds; when the gateway sent
    a google.rpc.RetryInfo, at least its delay instead (plus up to ``jitter`` of it, so that
    clients told the same delay do not all come back at once). RESOURCE_EXHAUSTED without a
    RetryInfo is not retried: the gateway says so when waiting would not help (a request over
    a size limit, a batch larger than a second's worth of the quota). No retry outlives the
    call's deadline.

    Writes are safe to retry: the client sends every Ingest, IngestBatch and DeleteDocument
    with an idempotency key, the same on each attempt.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2
    codes: frozenset[grpc.StatusCode] = field(default=_RETRYABLE)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1 or self.jitter < 0:
            raise ValueError("backoffs and jitter must not be negative, nor multiplier below 1")

    def retries(self, error: SluiceError, attempt: int) -> bool:
        """Whether a call that failed with ``error`` on its ``attempt``-th try (from 1) goes again."""
        if attempt >= self.max_attempts or error.code not in self.codes:
            return False
        return error.code != grpc.StatusCode.RESOURCE_EXHAUSTED or error.retry_delay is not None

    def backoff(self, error: SluiceError, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after the ``attempt``-th try failed with ``error``."""
        if error.retry_delay is not None:
            return error.retry_delay * (1 + self.jitter * rand())
        cap = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return cap / 2 + cap / 2 * rand()

    def next_delay(
        self,
        error: SluiceError,
        attempt: int,
        deadline: float | None,
        now: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> float | None:
        """The wait before the next attempt, or None when the call should fail with ``error``.

        ``deadline`` is on the ``time.monotonic`` clock (None: none); a retry that could only
        start after it is not made.
        """
        if not self.retries(error, attempt):
            return None
        delay = self.backoff(error, attempt, rand)
        if deadline is not None and now() + delay >= deadline:
            return None
        return delay


#: A policy that never retries.
NO_RETRY = RetryPolicy(max_attempts=1)


def deadline_after(timeout: float | None) -> float | None:
    """The monotonic deadline ``timeout`` seconds from now (None: no deadline)."""
    return None if timeout is None else time.monotonic() + timeout


def remaining(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (never negative; None: no deadline)."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())
