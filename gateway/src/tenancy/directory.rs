//! The gateway's copy of the tenant registry: tenants, their quotas, certificate bindings and
//! revocations.
//!
//! Every request is checked against it, so it lives in memory; a background task reloads it
//! from the database every `registry.refresh_interval_ms`. That is how a suspension, a quota
//! change or a revocation made with `sluice-admin` on any machine reaches every gateway
//! instance within seconds, with no restart and no message bus of its own.
//!
//! It fails closed: a copy older than the grace period (`tenants.grace_period_ms`, the
//! database unreadable that long) is not trusted; calls are refused UNAVAILABLE and the health
//! report says why, because a revocation or suspension made meanwhile would go unseen.

use sluice_core::telemetry::Chain;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sluice_core::tenants::{TenantError, TenantSnapshot, Tenants};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::periodic;

/// How long a copy of the registry is trusted after the last successful read, by default.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct TenantDirectory {
    registry: Tenants,
    /// The copy, and when it was read.
    snapshot: Arc<RwLock<(Arc<TenantSnapshot>, Instant)>>,
    grace: Duration,
}

/// The copy of the registry is older than the grace period.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the tenant registry has not been readable for {} s (grace period {} s); calls are refused until it is", age.as_secs(), grace.as_secs())]
pub struct Stale {
    pub age: Duration,
    pub grace: Duration,
}

impl TenantDirectory {
    /// Reads the registry once; the gateway does not start without it.
    pub async fn load(registry: Tenants) -> Result<Self, TenantError> {
        let snapshot = registry.snapshot().await?;
        Ok(Self {
            registry,
            snapshot: Arc::new(RwLock::new((Arc::new(snapshot), Instant::now()))),
            grace: DEFAULT_GRACE,
        })
    }

    /// The same directory, trusting a copy for `grace` after the last successful read.
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The registry as last read, unless that was longer ago than the grace period: cheap,
    /// for every request.
    pub fn current(&self) -> Result<Arc<TenantSnapshot>, Stale> {
        let (snapshot, read_at) = &*self.snapshot.read().expect("directory lock");
        let age = read_at.elapsed();
        if age > self.grace {
            return Err(Stale {
                age,
                grace: self.grace,
            });
        }
        Ok(snapshot.clone())
    }

    /// How long ago the registry was last read.
    pub fn age(&self) -> Duration {
        self.snapshot.read().expect("directory lock").1.elapsed()
    }

    /// Reads the registry again now.
    pub async fn refresh(&self) -> Result<(), TenantError> {
        let snapshot = self.registry.snapshot().await?;
        *self.snapshot.write().expect("directory lock") = (Arc::new(snapshot), Instant::now());
        Ok(())
    }

    /// Refreshes every `interval` until shutdown. When the database is unreachable the last
    /// copy stays in force for the grace period, and the failure is logged.
    pub fn spawn_refresher(
        &self,
        interval: Duration,
        shutdown: CancellationToken,
    ) -> JoinHandle<()> {
        let directory = self.clone();
        // Said once when refreshing starts failing and once when it works again.
        let failing = Arc::new(AtomicBool::new(false));
        periodic::spawn(interval, shutdown, move || {
            let directory = directory.clone();
            let failing = failing.clone();
            async move {
                match directory.refresh().await {
                    Ok(()) => {
                        if failing.swap(false, Ordering::Relaxed) {
                            tracing::info!("tenant registry readable again");
                        }
                    }
                    Err(error) => {
                        if !failing.swap(true, Ordering::Relaxed) {
                            tracing::error!(error = %Chain(&error), "cannot refresh the tenant registry; using the last copy");
                        }
                    }
                }
            }
        })
    }
}
