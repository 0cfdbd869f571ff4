//! Per-tenant quotas, so that one tenant cannot slow another: documents per second and bytes
//! per second (governor's GCRA rate limiters, a burst of one second's worth), the largest
//! payload, the most open watch streams and the largest `top_k`.
//!
//! A request over a limit is refused before it costs anything else (no validation, no Kafka
//! transaction) with RESOURCE_EXHAUSTED and a google.rpc.QuotaFailure naming the limit; when
//! waiting helps, a google.rpc.RetryInfo says how long.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use sluice_core::tenant::TenantId;
use sluice_core::tenants::Quotas;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::tenancy::auth::Caller;

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock>;

/// The rate limiters of one tenant, built for the quotas they enforce.
struct Rates {
    quotas: Quotas,
    documents: Arc<Limiter>,
    bytes: Arc<Limiter>,
    requests: Arc<Limiter>,
}

impl Rates {
    fn new(quotas: &Quotas) -> Self {
        Self {
            quotas: *quotas,
            documents: Arc::new(per_second(u64::from(quotas.documents_per_second))),
            bytes: Arc::new(per_second(quotas.bytes_per_second)),
            requests: Arc::new(per_second(u64::from(quotas.requests_per_second))),
        }
    }
}

/// A limiter allowing `rate` cells per second, with a burst of one second's worth.
fn per_second(rate: u64) -> Limiter {
    let rate = NonZeroU32::new(rate.clamp(1, u64::from(u32::MAX)) as u32).expect("clamped");
    RateLimiter::direct(Quota::per_second(rate).allow_burst(rate))
}

#[derive(Default)]
pub struct QuotaGate {
    rates: Mutex<HashMap<TenantId, Rates>>,
    watches: Mutex<HashMap<TenantId, Arc<AtomicU32>>>,
}

impl QuotaGate {
    pub fn new() -> Self {
        Self::default()
    }

    /// The caller's rate limiters, rebuilt when its quotas changed in the registry.
    fn rates(&self, caller: &Caller) -> (Arc<Limiter>, Arc<Limiter>, Arc<Limiter>) {
        let mut rates = self.rates.lock().expect("quota lock");
        let rates = rates
            .entry(caller.tenant.clone())
            .or_insert_with(|| Rates::new(&caller.quotas));
        if rates.quotas != caller.quotas {
            *rates = Rates::new(&caller.quotas);
        }
        (
            rates.documents.clone(),
            rates.bytes.clone(),
            rates.requests.clone(),
        )
    }

    /// Admits one call that is not an ingestion (`method` names it in the refusal), or refuses
    /// it with RESOURCE_EXHAUSTED and how long to wait.
    pub fn request(&self, caller: &Caller, method: &str) -> Result<(), Status> {
        let (_, _, requests) = self.rates(caller);
        take(&requests, 1, "requests_per_second", || {
            format!(
                "{method}: tenant {} may make {} calls per second besides ingestions",
                caller.tenant, caller.quotas.requests_per_second
            )
        })
    }

    /// Admits `documents` documents of `bytes` payload bytes in all, or refuses them all.
    pub fn admit(&self, caller: &Caller, documents: usize, bytes: usize) -> Result<(), Status> {
        let (documents_limiter, bytes_limiter, _) = self.rates(caller);
        let quotas = &caller.quotas;
        take(
            &documents_limiter,
            documents,
            "documents_per_second",
            || {
                format!(
                    "tenant {} may ingest {} documents per second",
                    caller.tenant, quotas.documents_per_second
                )
            },
        )?;
        take(&bytes_limiter, bytes, "bytes_per_second", || {
            format!(
                "tenant {} may ingest {} payload bytes per second",
                caller.tenant, quotas.bytes_per_second
            )
        })
    }

    /// Refuses a payload larger than the tenant's maximum.
    pub fn payload_size(&self, caller: &Caller, field: &str, bytes: usize) -> Result<(), Status> {
        let limit = caller.quotas.max_payload_bytes;
        if bytes as u64 > limit {
            return Err(exhausted(
                "max_payload_bytes",
                format!(
                    "{field}: {bytes} bytes; tenant {} may send payloads of at most {limit} bytes",
                    caller.tenant
                ),
                None,
            ));
        }
        Ok(())
    }

    /// Refuses a `top_k` larger than the tenant's maximum.
    pub fn top_k(&self, caller: &Caller, top_k: u32) -> Result<(), Status> {
        let limit = caller.quotas.max_top_k;
        if top_k > limit {
            return Err(exhausted(
                "max_top_k",
                format!(
                    "top_k {top_k}: tenant {} may ask for at most {limit} hits",
                    caller.tenant
                ),
                None,
            ));
        }
        Ok(())
    }

    /// A place for one more watch stream, or call waiting with `wait = true`; it is given
    /// back when the permit is dropped.
    pub fn open_watch(&self, caller: &Caller, kind: Watcher) -> Result<WatchPermit, Status> {
        let open = self
            .watches
            .lock()
            .expect("quota lock")
            .entry(caller.tenant.clone())
            .or_default()
            .clone();
        let limit = caller.quotas.max_watch_streams;
        let admitted = open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            return Err(exhausted(
                "max_watch_streams",
                format!(
                    "tenant {} may hold at most {limit} watch streams open",
                    caller.tenant
                ),
                Some(Duration::from_secs(1)),
            ));
        }
        metrics::gauge!(kind.gauge()).increment(1);
        Ok(WatchPermit { open, kind })
    }
}

/// What holds a [`WatchPermit`]: both count against `max_watch_streams`.
#[derive(Debug, Clone, Copy)]
pub enum Watcher {
    /// A WatchIngestions stream.
    Stream,
    /// An Ingest or DeleteDocument waiting for its ingestion to end.
    Waiting,
}

impl Watcher {
    fn gauge(self) -> &'static str {
        match self {
            Watcher::Stream => "sluice_gateway_watch_streams",
            Watcher::Waiting => "sluice_gateway_waiting_calls",
        }
    }
}

/// Held by an open watch stream or a waiting call.
pub struct WatchPermit {
    open: Arc<AtomicU32>,
    kind: Watcher,
}

impl Drop for WatchPermit {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
        metrics::gauge!(self.kind.gauge()).decrement(1);
    }
}

/// Takes `amount` cells from `limiter`, or says when to come back.
fn take(
    limiter: &Limiter,
    amount: usize,
    limit: &str,
    describe: impl Fn() -> String,
) -> Result<(), Status> {
    let Some(cells) = NonZeroU32::new(amount.min(u32::MAX as usize) as u32) else {
        return Ok(());
    };
    match limiter.check_n(cells) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(not_until)) => {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            Err(exhausted(
                limit,
                format!("{}; retry in {} ms", describe(), wait.as_millis().max(1)),
                Some(wait.max(Duration::from_millis(1))),
            ))
        }
        // More than a whole second's worth at once: waiting would not help.
        Err(_) => Err(exhausted(
            limit,
            format!("{}; this request alone is over that, split it", describe()),
            None,
        )),
    }
}

fn exhausted(limit: &str, message: String, retry_after: Option<Duration>) -> Status {
    let mut details = ErrorDetails::new();
    details.add_quota_failure_violation(limit, message.clone());
    if let Some(wait) = retry_after {
        details.set_retry_info(Some(wait));
    }
    Status::with_error_details(Code::ResourceExhausted, message, details)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(quotas: Quotas) -> Caller {
        Caller {
            tenant: TenantId::parse("acme").unwrap(),
            quotas,
        }
    }

    #[test]
    fn a_burst_over_the_rate_is_refused_with_a_retry_time() {
        let gate = QuotaGate::new();
        let acme = caller(Quotas {
            documents_per_second: 5,
            ..Quotas::default()
        });
        for _ in 0..5 {
            gate.admit(&acme, 1, 10).expect("within the burst");
        }
        let refused = gate.admit(&acme, 1, 10).expect_err("over the rate");
        assert_eq!(refused.code(), Code::ResourceExhausted);
        let details = refused.get_error_details();
        let wait = details
            .retry_info()
            .and_then(|r| r.retry_delay)
            .expect("retry info");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(200),
            "{wait:?}"
        );
        assert_eq!(
            details.quota_failure().unwrap().violations[0].subject,
            "documents_per_second"
        );
    }

    #[test]
    fn a_batch_larger_than_the_burst_can_never_pass() {
        let gate = QuotaGate::new();
        let acme = caller(Quotas {
            documents_per_second: 5,
            ..Quotas::default()
        });
        let refused = gate.admit(&acme, 6, 10).expect_err("bigger than the burst");
        assert!(refused.get_error_details().retry_info().is_none());
    }

    #[test]
    fn bytes_are_limited_too_and_a_new_quota_applies_at_once() {
        let gate = QuotaGate::new();
        let small = caller(Quotas {
            bytes_per_second: 1000,
            ..Quotas::default()
        });
        gate.admit(&small, 1, 1000).unwrap();
        assert!(gate.admit(&small, 1, 100).is_err());
        let larger = caller(Quotas {
            bytes_per_second: 100_000,
            ..Quotas::default()
        });
        gate.admit(&larger, 1, 50_000)
            .expect("the raised quota is in force");
    }

    #[test]
    fn watch_streams_are_counted_and_given_back() {
        let gate = QuotaGate::new();
        let acme = caller(Quotas {
            max_watch_streams: 2,
            ..Quotas::default()
        });
        let first = gate.open_watch(&acme, Watcher::Stream).unwrap();
        let _second = gate.open_watch(&acme, Watcher::Stream).unwrap();
        assert_eq!(
            gate.open_watch(&acme, Watcher::Stream)
                .err()
                .unwrap()
                .code(),
            Code::ResourceExhausted
        );
        drop(first);
        gate.open_watch(&acme, Watcher::Stream)
            .expect("a place was given back");
    }

    #[test]
    fn payload_and_top_k_limits_name_the_limit() {
        let gate = QuotaGate::new();
        let acme = caller(Quotas {
            max_payload_bytes: 100,
            max_top_k: 10,
            ..Quotas::default()
        });
        gate.payload_size(&acme, "document", 100).unwrap();
        let refused = gate.payload_size(&acme, "document", 101).unwrap_err();
        assert!(
            refused.message().contains("at most 100 bytes"),
            "{}",
            refused.message()
        );
        gate.top_k(&acme, 10).unwrap();
        assert_eq!(
            gate.top_k(&acme, 11).unwrap_err().code(),
            Code::ResourceExhausted
        );
    }
}
