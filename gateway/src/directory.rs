//! The gateway's copy of the tenant registry: tenants, their quotas, certificate bindings and
//! revocations.
//!
//! Every request is checked against it, so it lives in memory; a background task reloads it
//! from the database every `registry.refresh_interval_ms`. That is how a suspension, a quota
//! change or a revocation made with `sluice-admin` on any machine reaches every gateway
//! instance within seconds, with no restart and no message bus of its own.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use sluice_core::registry::{Registry, RegistryError, RegistrySnapshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct TenantDirectory {
    registry: Registry,
    snapshot: Arc<RwLock<Arc<RegistrySnapshot>>>,
}

impl TenantDirectory {
    /// Reads the registry once; the gateway does not start without it.
    pub async fn load(registry: Registry) -> Result<Self, RegistryError> {
        let snapshot = registry.snapshot().await?;
        Ok(Self {
            registry,
            snapshot: Arc::new(RwLock::new(Arc::new(snapshot))),
        })
    }

    /// The registry as last read: cheap, for every request.
    pub fn snapshot(&self) -> Arc<RegistrySnapshot> {
        self.snapshot.read().expect("directory lock").clone()
    }

    /// Reads the registry again now.
    pub async fn refresh(&self) -> Result<(), RegistryError> {
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
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut failing = false;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                match directory.refresh().await {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!("tenant registry readable again");
                    }
                    Ok(()) => {}
                    Err(error) if !failing => {
                        failing = true;
                        tracing::error!(%error, "cannot refresh the tenant registry; using the last copy");
                    }
                    Err(_) => {}
                }
            }
        })
    }
}
