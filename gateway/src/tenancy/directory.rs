//! The gateway's copy of the tenant registry: tenants, their quotas, certificate bindings and
//! revocations.
//!
//! Every request is checked against it, so it lives in memory; a background task reloads it
//! from the database every `registry.refresh_interval_ms`. That is how a suspension, a quota
//! change or a revocation made with `sluice-admin` on any machine reaches every gateway
//! instance within seconds, with no restart and no message bus of its own.

use sluice_core::telemetry::Chain;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sluice_core::tenants::{TenantError, TenantSnapshot, Tenants};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::periodic;

#[derive(Clone)]
pub struct TenantDirectory {
    registry: Tenants,
    snapshot: Arc<RwLock<Arc<TenantSnapshot>>>,
}

impl TenantDirectory {
    /// Reads the registry once; the gateway does not start without it.
    pub async fn load(registry: Tenants) -> Result<Self, TenantError> {
        let snapshot = registry.snapshot().await?;
        Ok(Self {
            registry,
            snapshot: Arc::new(RwLock::new(Arc::new(snapshot))),
        })
    }

    /// The registry as last read: cheap, for every request.
    pub fn snapshot(&self) -> Arc<TenantSnapshot> {
        self.snapshot.read().expect("directory lock").clone()
    }

    /// Reads the registry again now.
    pub async fn refresh(&self) -> Result<(), TenantError> {
        let snapshot = self.registry.snapshot().await?;
        *self.snapshot.write().expect("directory lock") = Arc::new(snapshot);
        Ok(())
    }

    /// Refreshes every `interval` until shutdown. When the database is unreachable the last
    /// copy stays in force (requests keep being served) and the failure is logged.
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
