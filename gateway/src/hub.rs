//! Fans ingestion events out to watch streams and waiting calls, in this gateway process.

use sluice_core::proto::{Ingestion, IngestionEvent, IngestionState};
use tokio::sync::broadcast;

/// One event, with the tenant it belongs to (the proto event does not carry it).
#[derive(Debug, Clone)]
pub struct TenantEvent {
    pub tenant: String,
    pub event: IngestionEvent,
}

impl TenantEvent {
    pub fn ingestion(&self) -> &Ingestion {
        self.event
            .ingestion
            .as_ref()
            .expect("hub events always carry the ingestion")
    }
}

/// Whether an ingestion has ended.
pub fn is_terminal(ingestion: &Ingestion) -> bool {
    matches!(
        IngestionState::try_from(ingestion.state),
        Ok(IngestionState::Indexed | IngestionState::Failed | IngestionState::Deleted)
    )
}

#[derive(Clone)]
pub struct Hub {
    sender: broadcast::Sender<TenantEvent>,
}

impl Hub {
    /// `capacity` events may be buffered per subscriber; a slower one is told it lagged.
    pub fn new(capacity: usize) -> Self {
        Self {
            sender: broadcast::channel(capacity).0,
        }
    }

    pub fn publish(&self, tenant: &str, ingestion: Ingestion) {
        let event = IngestionEvent {
            ingestion: Some(ingestion),
            event_time: Some(now()),
        };
        // No subscribers is fine: nobody is watching.
        let _ = self.sender.send(TenantEvent {
            tenant: tenant.to_owned(),
            event,
        });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<TenantEvent> {
        self.sender.subscribe()
    }
}

fn now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(std::time::SystemTime::now())
}
