//! Prunes the ingestion event log: events older than the retention are no longer needed to
//! resume a watch stream (a cursor that old is answered OUT_OF_RANGE); and idempotency claims
//! older than the idempotency window. Every gateway instance prunes; deleting what another
//! already deleted is harmless.

use sluice_core::telemetry::Chain;
use std::time::Duration;

use sea_orm::DatabaseConnection;
use sluice_core::db::{claim, projection};
use sluice_core::record::now_ms;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::periodic;

/// How often the log is pruned.
const EVERY: Duration = Duration::from_secs(600);

pub fn spawn(
    db: DatabaseConnection,
    retention: Duration,
    idempotency_window: Duration,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    periodic::spawn(EVERY, shutdown, move || {
        let db = db.clone();
        async move {
            let before = now_ms() - retention.as_millis() as i64;
            match projection::prune_events(&db, before).await {
                Ok(0) => {}
                Ok(pruned) => tracing::info!(pruned, "ingestion events past retention pruned"),
                Err(error) => {
                    tracing::warn!(error = %Chain(&error), "cannot prune ingestion events")
                }
            }
            let before = now_ms() - idempotency_window.as_millis() as i64;
            if let Err(error) = claim::prune(&db, before).await {
                tracing::warn!(error = %Chain(&error), "cannot prune idempotency claims")
            }
        }
    })
}
