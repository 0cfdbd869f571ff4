//! When, and after how long, a failed call is tried again.

use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Code, Error};

/// Retries of UNAVAILABLE, ABORTED and RESOURCE_EXHAUSTED, bounded in attempts and in time.
///
/// The n-th retry waits a random time between half and all of
/// `min(max_backoff, initial_backoff * multiplier^(n - 1))`; when the gateway sent a
/// google.rpc.RetryInfo, at least its delay instead (plus up to `jitter` of it, so that
/// clients told the same delay do not all come back at once). RESOURCE_EXHAUSTED without a
/// RetryInfo is not retried: the gateway sends none when waiting would not help (a request
/// over a size limit, a batch larger than a second's worth of the quota). No retry is made
/// that could only start after the call's deadline.
///
/// Writes are safe to retry: the client sends every Ingest, IngestBatch and DeleteDocument
/// with an idempotency key, the same on each attempt.
///
/// ```
/// use std::time::Duration;
/// use sluice_client::RetryPolicy;
///
/// let patient = RetryPolicy { max_attempts: 10, max_backoff: Duration::from_secs(2), ..RetryPolicy::default() };
/// # assert!(patient.validate().is_ok());
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1). Default 5.
    pub max_attempts: u32,
    /// The first backoff's cap. Default 100 ms.
    pub initial_backoff: Duration,
    /// No backoff (without RetryInfo) is longer. Default 5 s.
    pub max_backoff: Duration,
    /// How much each backoff's cap grows (at least 1). Default 2.
    pub multiplier: f64,
    /// Up to this share of a RetryInfo delay is added to it, at random. Default 0.2.
    pub jitter: f64,
    /// The codes that are retried. Default UNAVAILABLE, ABORTED, RESOURCE_EXHAUSTED.
    pub codes: Vec<Code>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            multiplier: 2.0,
            jitter: 0.2,
            codes: vec![Code::Unavailable, Code::Aborted, Code::ResourceExhausted],
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn never() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The default of watch streams, patient: a watch outlives gateway restarts (20 attempts
    /// in a row, about a minute of trying).
    pub fn watch() -> Self {
        Self {
            max_attempts: 20,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            ..Self::default()
        }
    }

    /// Why the policy cannot be used, if it cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts < 1 {
            return Err("max_attempts must be at least 1".into());
        }
        if !(self.multiplier >= 1.0 && self.multiplier.is_finite()) {
            return Err("multiplier must be finite and at least 1".into());
        }
        if !(self.jitter >= 0.0 && self.jitter.is_finite()) {
            return Err("jitter must be finite and not negative".into());
        }
        Ok(())
    }

    /// Whether a call that failed with `error` on its `attempt`-th try (from 1) goes again.
    pub fn retries(&self, error: &Error, attempt: u32) -> bool {
        if attempt >= self.max_attempts || !self.codes.contains(&error.code()) {
            return false;
        }
        error.code() != Code::ResourceExhausted || error.retry_delay().is_some()
    }

    /// How long to wait after the `attempt`-th try failed with `error`; `random` is in
    /// `[0, 1]` (the jitter).
    pub fn backoff(&self, error: &Error, attempt: u32, random: f64) -> Duration {
        let random = random.clamp(0.0, 1.0);
        if let Some(delay) = error.retry_delay() {
            let jittered = delay.as_secs_f64() * (1.0 + self.jitter * random);
            return Duration::try_from_secs_f64(jittered).unwrap_or(Duration::MAX);
        }
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let grown = self.initial_backoff.as_secs_f64() * self.multiplier.powi(exponent);
        let cap = grown.min(self.max_backoff.as_secs_f64());
        Duration::from_secs_f64(cap / 2.0 + cap / 2.0 * random)
    }

    /// The wait before the next attempt, or `None` when the call should fail with `error`:
    /// not retried, out of attempts, or the next attempt could only start at or after
    /// `deadline`.
    pub fn next_delay(
        &self,
        error: &Error,
        attempt: u32,
        deadline: Option<Instant>,
        now: Instant,
        random: f64,
    ) -> Option<Duration> {
        if !self.retries(error, attempt) {
            return None;
        }
        let delay = self.backoff(error, attempt, random);
        match deadline {
            Some(deadline) if now.checked_add(delay).is_none_or(|at| at >= deadline) => None,
            _ => Some(delay),
        }
    }
}

/// A random number in `[0, 1)` for jitter (std's per-process random SipHash keys; no
/// cryptographic quality needed).
pub(crate) fn random() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(code: Code, retry_delay: Option<f64>) -> Error {
        let mut details = tonic_types::ErrorDetails::new();
        if let Some(delay) = retry_delay {
            details.set_retry_info(Some(Duration::from_secs_f64(delay)));
        }
        use tonic_types::StatusExt;
        Error::from_status(tonic::Status::with_error_details(code, "x", details))
    }

    fn close(a: Duration, b: f64) -> bool {
        (a.as_secs_f64() - b).abs() < 1e-6
    }

    #[test]
    fn which_codes_are_retried() {
        let policy = RetryPolicy::default();
        assert!(policy.retries(&err(Code::Unavailable, None), 1));
        assert!(policy.retries(&err(Code::Aborted, None), 1));
        assert!(policy.retries(&err(Code::ResourceExhausted, Some(0.5)), 1));
        // Without RetryInfo the gateway says waiting will not help.
        assert!(!policy.retries(&err(Code::ResourceExhausted, None), 1));
        for code in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::DeadlineExceeded,
            Code::PermissionDenied,
            Code::FailedPrecondition,
            Code::Unknown,
        ] {
            assert!(!policy.retries(&err(code, Some(1.0)), 1), "{code:?}");
        }
    }

    #[test]
    fn attempts_are_bounded() {
        let policy = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        assert!(policy.retries(&err(Code::Unavailable, None), 2));
        assert!(!policy.retries(&err(Code::Unavailable, None), 3));
        assert!(!RetryPolicy::never().retries(&err(Code::Unavailable, None), 1));
        let none = RetryPolicy {
            max_attempts: 0,
            ..RetryPolicy::default()
        };
        assert!(none.validate().is_err());
        let shrinking = RetryPolicy {
            multiplier: 0.5,
            ..RetryPolicy::default()
        };
        assert!(shrinking.validate().is_err());
        assert!(RetryPolicy::watch().validate().is_ok());
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let policy = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            multiplier: 2.0,
            max_backoff: Duration::from_secs(1),
            ..RetryPolicy::default()
        };
        let e = err(Code::Unavailable, None);
        let high: Vec<_> = (1..=6).map(|n| policy.backoff(&e, n, 1.0)).collect();
        let low: Vec<_> = (1..=6).map(|n| policy.backoff(&e, n, 0.0)).collect();
        for (got, want) in high.iter().zip([0.1, 0.2, 0.4, 0.8, 1.0, 1.0]) {
            assert!(close(*got, want), "{got:?} vs {want}");
        }
        for (low, high) in low.iter().zip(&high) {
            assert!(close(*low, high.as_secs_f64() / 2.0));
        }
        // No overflow however many attempts.
        assert!(close(policy.backoff(&e, u32::MAX, 1.0), 1.0));
    }

    #[test]
    fn retry_info_is_a_floor_with_jitter_above_it() {
        let policy = RetryPolicy {
            max_backoff: Duration::from_millis(500),
            jitter: 0.2,
            ..RetryPolicy::default()
        };
        let e = err(Code::Unavailable, Some(3.0));
        assert!(close(policy.backoff(&e, 1, 0.0), 3.0));
        assert!(close(policy.backoff(&e, 1, 1.0), 3.6));
    }

    #[test]
    fn no_retry_past_the_deadline() {
        let policy = RetryPolicy::default();
        let now = Instant::now();
        let e = err(Code::Unavailable, Some(1.0));
        let at = |ms| Some(now + Duration::from_millis(ms));
        assert_eq!(policy.next_delay(&e, 1, at(500), now, 0.0), None);
        assert_eq!(policy.next_delay(&e, 1, at(1000), now, 0.0), None);
        assert!(close(
            policy.next_delay(&e, 1, at(2000), now, 0.0).unwrap(),
            1.0
        ));
        assert!(close(
            policy.next_delay(&e, 1, None, now, 0.0).unwrap(),
            1.0
        ));
    }

    #[test]
    fn random_is_in_range_and_varies() {
        let draws: Vec<f64> = (0..100).map(|_| random()).collect();
        assert!(draws.iter().all(|r| (0.0..1.0).contains(r)));
        let first = draws[0];
        assert!(draws.iter().any(|r| *r != first));
    }
}
