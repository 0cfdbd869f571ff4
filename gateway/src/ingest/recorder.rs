//! Records accepted ingestions in the database: requests that arrive together share one
//! database transaction ([group commit](crate::ingest::group_commit)), as they share Kafka
//! transactions in the [appender]. Each database transaction appends to the event log, which
//! writers must take turns on; one transaction for many requests keeps that turn-taking off
//! the Ingest path's latency.
//!
//! [appender]: crate::ingest::appender

use std::collections::HashMap;
use std::sync::Arc;

use sea_orm::{DatabaseConnection, DbErr};
use sluice_core::db::ingestion;
use sluice_core::db::projection::{self, Change};
use tokio::task::JoinHandle;

use crate::ingest::group_commit::{Commit, GroupCommit};

/// Rows written in one database transaction, at most (a single larger request goes alone).
const MAX_ROWS: usize = 1000;

/// Why rows were not recorded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RecordError {
    /// The database transaction failed; every request of its group gets the same error.
    #[error("recording accepted ingestions failed")]
    Database(#[source] Arc<DbErr>),
    #[error("the gateway is shutting down")]
    ShuttingDown,
}

/// The handle requests use; when every handle is dropped the recorder stops.
#[derive(Clone)]
pub struct Recorder {
    transactions: GroupCommit<Transactions>,
}

impl Recorder {
    pub fn spawn(db: DatabaseConnection) -> (Self, JoinHandle<()>) {
        let (transactions, task) = GroupCommit::spawn("recorder", Transactions { db }, MAX_ROWS);
        (Self { transactions }, task)
    }

    /// Records `rows` as accepted (see [`projection::record_accepted`]); returns the changes,
    /// each with its event number.
    pub async fn record(&self, rows: Vec<ingestion::Model>) -> Result<Vec<Change>, RecordError> {
        let answer = self
            .transactions
            .submit(rows)
            .await
            .map_err(|_| RecordError::ShuttingDown)?;
        let changes = answer?;
        Ok(changes.into_iter().flatten().collect())
    }
}

struct Transactions {
    db: DatabaseConnection,
}

impl Commit for Transactions {
    type Item = ingestion::Model;
    /// The row's change, or `None` when it was recorded before.
    type Output = Option<Change>;
    /// Shared (DbErr cannot be cloned) by every request of the group.
    type Error = RecordError;

    async fn commit(
        &mut self,
        rows: &[ingestion::Model],
    ) -> Result<Vec<Option<Change>>, RecordError> {
        let ids: Vec<String> = rows.iter().map(|r| r.ingestion_id.clone()).collect();
        let changes = projection::record_accepted(&self.db, rows.to_vec())
            .await
            .map_err(|e| RecordError::Database(Arc::new(e)))?;
        let mut by_id: HashMap<String, Change> = changes
            .into_iter()
            .map(|change| (change.row.ingestion_id.clone(), change))
            .collect();
        Ok(ids.iter().map(|id| by_id.remove(id)).collect())
    }
}
