//! Fans ingestion events out to watch streams and waiting calls, in this gateway process.
//!
//! The hub is for promptness only: the event log in the database is what watch streams read
//! (so they miss nothing across restarts and instances); an event here wakes them up, and hands
//! a waiting `wait = true` call its ingestion's end.

use sluice_core::proto::{Ingestion, IngestionEvent, IngestionState};
use tokio::sync::broadcast;

/// One event, with the tenant it belongs to (the proto event does not carry it).
#[derive(Debug, Clone)]
pub struct TenantEvent {
    pub tenant: String,
    pub event: IngestionEvent,
}

/// Cursors are opaque to clients; today a cursor is the event's number in the log.
pub fn cursor(seq: i64) -> String {
    seq.to_string()
}

/// The event number a cursor names; `None` for an empty cursor.
pub fn parse_cursor(cursor: &str) -> Result<Option<i64>, String> {
    if cursor.is_empty() {
        return Ok(None);
    }
    match cursor.parse::<i64>() {
        Ok(seq) if seq >= 0 => Ok(Some(seq)),
        _ => Err(format!(
            "{cursor:?} is not a cursor this gateway handed out"
        )),
    }
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

    /// Publishes the change recorded as event `seq`.
    pub fn publish(&self, tenant: &str, seq: i64, ingestion: Ingestion) {
        let event = IngestionEvent {
            ingestion: Some(ingestion),
            event_time: Some(now()),
            cursor: cursor(seq),
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
