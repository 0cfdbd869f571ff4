//! One WatchIngestions stream: reads the tenant's event log from a cursor on, in order, and
//! sends each event once. The [hub](super::hub) only wakes it; the log in the database is
//! what it reads, so it misses nothing across restarts and gateway instances.

use std::collections::HashSet;
use std::time::Duration;

use sea_orm::DatabaseConnection;
use sluice_core::db::projection;
use sluice_core::proto::IngestionEvent;
use sluice_core::tenant::TenantId;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::ingest::hub::{self, is_terminal, TenantEvent};
use crate::ingest::service::{timestamp, to_proto};
use crate::services::status;
use crate::tenancy::auth::Credentials;

/// Events a watch stream reads from the log per query.
pub(super) const WATCH_PAGE: u64 = 256;
/// How often an idle watch stream looks at the log without being woken: events written by
/// another gateway instance wake nobody here.
const WATCH_POLL: Duration = Duration::from_secs(1);

/// One watch stream: reads the tenant's event log from a cursor on, in order, and sends each
/// event once.
pub(super) struct EventTail {
    pub(super) db: DatabaseConnection,
    pub(super) tenant: TenantId,
    /// Only these ingestions (then the stream ends once all of them have ended).
    pub(super) ids: Option<Vec<String>>,
    pub(super) pending: HashSet<String>,
    /// The number of the last event sent.
    pub(super) last: i64,
    pub(super) wake: broadcast::Receiver<TenantEvent>,
    pub(super) shutdown: CancellationToken,
    pub(super) sender: mpsc::Sender<Result<IngestionEvent, Status>>,
    /// Checked before every page (at least every [`WATCH_POLL`]): the stream ends with the
    /// refusal once the caller may no longer call.
    pub(super) credentials: Credentials,
}

impl EventTail {
    pub(super) async fn run(mut self, snapshot: Vec<IngestionEvent>) {
        for event in snapshot {
            if self.sender.send(Ok(event)).await.is_err() {
                return;
            }
        }
        loop {
            if let Err(refused) = self.credentials.check() {
                let _ = self.sender.send(Err(refused)).await;
                return;
            }
            let page = match projection::events_after(
                &self.db,
                self.tenant.as_str(),
                self.last,
                self.ids.as_deref(),
                WATCH_PAGE,
            )
            .await
            {
                Ok(page) => page,
                Err(error) => {
                    let _ = self.sender.send(Err(status::database(error))).await;
                    return;
                }
            };
            let caught_up = (page.len() as u64) < WATCH_PAGE;
            for event in page {
                // The tenant's own number: the cursor, and what the next page starts after.
                self.last = event.tenant_seq;
                let ingestion = to_proto(&event.ingestion());
                if is_terminal(&ingestion) {
                    self.pending.remove(&ingestion.ingestion_id);
                }
                let event = IngestionEvent {
                    ingestion: Some(ingestion),
                    event_time: Some(timestamp(event.event_at_ms)),
                    cursor: hub::cursor(event.tenant_seq),
                };
                if self.sender.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            if !caught_up {
                continue;
            }
            if self.ids.is_some() && self.pending.is_empty() {
                return;
            }
            if !self.wait_for_more().await {
                return;
            }
        }
    }

    /// Waits until this tenant may have a new event; false when the stream should end.
    async fn wait_for_more(&mut self) -> bool {
        let poll = tokio::time::sleep(WATCH_POLL);
        tokio::pin!(poll);
        loop {
            tokio::select! {
                _ = self.sender.closed() => return false,
                _ = self.shutdown.cancelled() => {
                    let _ = self
                        .sender
                        .send(Err(Status::unavailable(
                            "gateway is shutting down; watch again with your last cursor",
                        )))
                        .await;
                    return false;
                }
                _ = &mut poll => return true,
                event = self.wake.recv() => match event {
                    Ok(event) if event.tenant == self.tenant.as_str() => return true,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => return true,
                    Err(broadcast::error::RecvError::Closed) => {
                        let _ = self
                            .sender
                            .send(Err(Status::unavailable("gateway is shutting down")))
                            .await;
                        return false;
                    }
                },
            }
        }
    }
}
