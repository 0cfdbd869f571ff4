//! Per-tenant quotas, so that one tenant cannot slow another: documents per second, bytes
//! per second and other calls per second (token buckets with a burst of one second's worth),
//! the largest payload, the most open watch streams and the largest `top_k`.
//!
//! A request over a limit is refused before it costs anything else (no validation, no Kafka
//! transaction) with RESOURCE_EXHAUSTED and a google.rpc.QuotaFailure naming the limit; when
//! waiting helps, a google.rpc.RetryInfo says how long.
//!
//! # Across gateways
//! With `gateway.shared_quotas` (the default on PostgreSQL) the rates hold in total, however
//! many gateways a tenant's calls reach: every gateway draws from one bucket per tenant and
//! kind in the database ([`sluice_core::db::quota`]). So that a call rarely waits for the
//! database, a gateway leases a slice of tokens ([`LEASE`] of the rate, or what the call
//! needs if more) and spends it locally; a slice not spent within [`RESERVE_TTL`] is dropped.
//!
//! Error bound: every admitted token was taken from the shared bucket once, so over any
//! interval `T` a tenant is admitted at most `rate × (T + RESERVE_TTL) + burst` in total (a
//! slice may be spent up to `RESERVE_TTL` after it was leased), against `rate × T + burst` on
//! one gateway. It can be admitted less: up to one unspent slice per gateway (`LEASE` of the
//! rate each) is held elsewhere until it expires. Clocks: a gateway whose clock runs behind
//! the last taker's earns no refill until it catches up, so skew only ever admits less. If the
//! database cannot be reached, each gateway falls back to its own limiter for the moment.
//! Without shared quotas (SQLite, one gateway) the limiters are governor's GCRA, in memory.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use sea_orm::DatabaseConnection;
use sluice_core::db::quota::{self as buckets, Shape, Take};
use sluice_core::record::now_ms;
use sluice_core::telemetry::Chain;
use sluice_core::tenant::TenantId;
use sluice_core::tenants::Quotas;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::tenancy::auth::Caller;

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock>;

/// The share of a second's rate a gateway leases from a shared bucket at a time.
pub const LEASE: f64 = 0.05;
/// How long a leased slice may be spent.
pub const RESERVE_TTL: Duration = Duration::from_millis(500);

/// Why a take was refused.
enum Refused {
    /// Come back after this long.
    Wait(Duration),
    /// More than a whole second's worth at once: waiting would not help.
    TooLarge,
}

/// One rate limit of one tenant: governor's limiter in memory, and the shared bucket when
/// quotas are shared.
struct Rate {
    local: Limiter,
    shared: Option<Leased>,
}

impl Rate {
    fn new(
        rate: u64,
        kind: &'static str,
        tenant: &TenantId,
        db: Option<&DatabaseConnection>,
    ) -> Self {
        let rate = rate.clamp(1, u64::from(u32::MAX));
        let per_second = NonZeroU32::new(rate as u32).expect("clamped");
        Self {
            local: RateLimiter::direct(Quota::per_second(per_second).allow_burst(per_second)),
            shared: db.map(|db| Leased {
                db: db.clone(),
                tenant: tenant.to_string(),
                kind,
                shape: Shape {
                    rate: rate as f64,
                    capacity: rate as f64,
                },
                reserve: tokio::sync::Mutex::new(Reserve {
                    tokens: 0.0,
                    expires: Instant::now(),
                }),
            }),
        }
    }

    async fn take(&self, amount: usize) -> Result<(), Refused> {
        if amount == 0 {
            return Ok(());
        }
        if let Some(shared) = &self.shared {
            match shared.take(amount as f64).await {
                Ok(taken) => return taken,
                Err(error) => {
                    tracing::warn!(error = %Chain(&error), tenant = %shared.tenant, kind = shared.kind, "shared quota unavailable; this gateway's own limiter decides")
                }
            }
        }
        let cells = NonZeroU32::new(amount.min(u32::MAX as usize) as u32).expect("not zero");
        match self.local.check_n(cells) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(Refused::Wait(
                not_until.wait_time_from(DefaultClock::default().now()),
            )),
            Err(_) => Err(Refused::TooLarge),
        }
    }
}

/// A tenant's shared bucket of one kind, and the slice of it this gateway holds.
struct Leased {
    db: DatabaseConnection,
    tenant: String,
    kind: &'static str,
    shape: Shape,
    reserve: tokio::sync::Mutex<Reserve>,
}

struct Reserve {
    tokens: f64,
    expires: Instant,
}

impl Leased {
    async fn take(&self, amount: f64) -> Result<Result<(), Refused>, sea_orm::DbErr> {
        if amount > self.shape.capacity {
            return Ok(Err(Refused::TooLarge));
        }
        // One lease at a time per tenant and kind on this gateway; the others wait for it.
        let mut reserve = self.reserve.lock().await;
        if reserve.expires <= Instant::now() {
            reserve.tokens = 0.0;
        }
        if reserve.tokens >= amount {
            reserve.tokens -= amount;
            return Ok(Ok(()));
        }
        let need = amount - reserve.tokens;
        let slice = (self.shape.rate * LEASE).max(need);
        let started = Instant::now();
        let taken = buckets::take(
            &self.db,
            &self.tenant,
            self.kind,
            self.shape,
            need,
            slice,
            now_ms(),
        )
        .await;
        metrics::histogram!("sluice_gateway_database_duration_seconds", "operation" => "quota_lease")
            .record(started.elapsed().as_secs_f64());
        Ok(match taken? {
            Take::Granted(granted) => {
                reserve.tokens = reserve.tokens + granted - amount;
                reserve.expires = Instant::now() + RESERVE_TTL;
                Ok(())
            }
            Take::Short { available } => Err(Refused::Wait(Duration::from_secs_f64(
                (need - available).max(0.0) / self.shape.rate,
            ))),
        })
    }
}

/// The rate limits of one tenant, built for the quotas they enforce.
struct Rates {
    quotas: Quotas,
    documents: Arc<Rate>,
    bytes: Arc<Rate>,
    requests: Arc<Rate>,
}

impl Rates {
    fn new(tenant: &TenantId, quotas: &Quotas, db: Option<&DatabaseConnection>) -> Self {
        Self {
            quotas: *quotas,
            documents: Arc::new(Rate::new(
                u64::from(quotas.documents_per_second),
                "documents",
                tenant,
                db,
            )),
            bytes: Arc::new(Rate::new(quotas.bytes_per_second, "bytes", tenant, db)),
            requests: Arc::new(Rate::new(
                u64::from(quotas.requests_per_second),
                "requests",
                tenant,
                db,
            )),
        }
    }
}

#[derive(Default)]
pub struct QuotaGate {
    /// Where the shared buckets are; `None`: this gateway's limiters alone decide.
    shared: Option<DatabaseConnection>,
    rates: Mutex<HashMap<TenantId, Rates>>,
    watches: Mutex<HashMap<TenantId, Arc<AtomicU32>>>,
}

impl QuotaGate {
    /// Rates enforced by this gateway alone.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rates enforced in total across every gateway sharing `db`.
    pub fn shared(db: DatabaseConnection) -> Self {
        Self {
            shared: Some(db),
            ..Self::default()
        }
    }

    /// The caller's rate limits, rebuilt when its quotas changed in the registry.
    fn rates(&self, caller: &Caller) -> (Arc<Rate>, Arc<Rate>, Arc<Rate>) {
        let mut rates = self.rates.lock().expect("quota lock");
        let rates = rates
            .entry(caller.tenant.clone())
            .or_insert_with(|| Rates::new(&caller.tenant, &caller.quotas, self.shared.as_ref()));
        if rates.quotas != caller.quotas {
            *rates = Rates::new(&caller.tenant, &caller.quotas, self.shared.as_ref());
        }
        (
            rates.documents.clone(),
            rates.bytes.clone(),
            rates.requests.clone(),
        )
    }

    /// Admits one call that is not an ingestion (`method` names it in the refusal), or refuses
    /// it with RESOURCE_EXHAUSTED and how long to wait.
    pub async fn request(&self, caller: &Caller, method: &str) -> Result<(), Status> {
        let (_, _, requests) = self.rates(caller);
        let taken = requests.take(1).await;
        refusal(taken, "requests_per_second", || {
            format!(
                "{method}: tenant {} may make {} calls per second besides ingestions",
                caller.tenant, caller.quotas.requests_per_second
            )
        })
    }

    /// Admits `documents` documents of `bytes` payload bytes in all, or refuses them all.
    pub async fn admit(
        &self,
        caller: &Caller,
        documents: usize,
        bytes: usize,
    ) -> Result<(), Status> {
        let (documents_rate, bytes_rate, _) = self.rates(caller);
        let quotas = &caller.quotas;
        refusal(
            documents_rate.take(documents).await,
            "documents_per_second",
            || {
                format!(
                    "tenant {} may ingest {} documents per second",
                    caller.tenant, quotas.documents_per_second
                )
            },
        )?;
        refusal(bytes_rate.take(bytes).await, "bytes_per_second", || {
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

/// The status for a refused take, naming `limit`.
fn refusal(
    taken: Result<(), Refused>,
    limit: &str,
    describe: impl Fn() -> String,
) -> Result<(), Status> {
    match taken {
        Ok(()) => Ok(()),
        Err(Refused::Wait(wait)) => {
            let wait = wait.max(Duration::from_millis(1));
            Err(exhausted(
                limit,
                format!("{}; retry in {} ms", describe(), wait.as_millis()),
                Some(wait),
            ))
        }
        Err(Refused::TooLarge) => Err(exhausted(
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

    #[tokio::test]
    async fn a_burst_over_the_rate_is_refused_with_a_retry_time() {
        let gate = QuotaGate::new();
        let acme = caller(Quotas {
            documents_per_second: 5,
            ..Quotas::default()
        });
        for _ in 0..5 {
            gate.admit(&acme, 1, 10).await.expect("within the burst");
        }
        let refused = gate.admit(&acme, 1, 10).await.expect_err("over the rate");
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

    #[tokio::test]
    async fn gateways_sharing_the_database_share_the_rate() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("q.db").display());
        let db = sluice_core::db::connect(&url).await.unwrap();
        let gates = [QuotaGate::shared(db.clone()), QuotaGate::shared(db)];
        let acme = caller(Quotas {
            documents_per_second: 100,
            ..Quotas::default()
        });
        let started = std::time::Instant::now();
        let mut admitted = 0;
        for i in 0..400 {
            if gates[i % 2].admit(&acme, 1, 10).await.is_ok() {
                admitted += 1;
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        // The burst (100) and what the elapsed time earned, however the calls were spread.
        let bound = 100.0 + 100.0 * (elapsed + RESERVE_TTL.as_secs_f64());
        assert!(
            f64::from(admitted) <= bound,
            "{admitted} admitted in {elapsed:.3} s (bound {bound:.0})"
        );
        assert!(admitted >= 90, "only {admitted} admitted of a burst of 100");
        // A refusal says how long to wait.
        let refused = loop {
            match gates[0].admit(&acme, 1, 10).await {
                Ok(()) => continue,
                Err(status) => break status,
            }
        };
        assert!(refused.get_error_details().retry_info().is_some());
    }

    #[tokio::test]
    async fn a_batch_larger_than_the_burst_can_never_pass() {
        let gate = QuotaGate::new();
        let acme = caller(Quotas {
            documents_per_second: 5,
            ..Quotas::default()
        });
        let refused = gate
            .admit(&acme, 6, 10)
            .await
            .expect_err("bigger than the burst");
        assert!(refused.get_error_details().retry_info().is_none());
    }

    #[tokio::test]
    async fn bytes_are_limited_too_and_a_new_quota_applies_at_once() {
        let gate = QuotaGate::new();
        let small = caller(Quotas {
            bytes_per_second: 1000,
            ..Quotas::default()
        });
        gate.admit(&small, 1, 1000).await.unwrap();
        assert!(gate.admit(&small, 1, 100).await.is_err());
        let larger = caller(Quotas {
            bytes_per_second: 100_000,
            ..Quotas::default()
        });
        gate.admit(&larger, 1, 50_000)
            .await
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
