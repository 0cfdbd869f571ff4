//! Records accepted ingestions in the database: requests that arrive together share one
//! database transaction (group commit), as they share Kafka transactions in the [appender].
//! Each database transaction appends to the event log, which writers must take turns on; one
//! transaction for many requests keeps that turn-taking off the Ingest path's latency.
//!
//! [appender]: crate::appender

use std::collections::HashMap;

use sea_orm::{DatabaseConnection, DbErr};
use sluice_core::db::ingestion;
use sluice_core::db::projection::{self, Change};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Rows written in one database transaction, at most (a single larger request goes alone).
const MAX_ROWS: usize = 1000;

struct Record {
    rows: Vec<ingestion::Model>,
    reply: oneshot::Sender<Result<Vec<Change>, DbErr>>,
}

/// The handle requests use; when every handle is dropped the recorder stops.
#[derive(Clone)]
pub struct Recorder {
    requests: mpsc::Sender<Record>,
}

impl Recorder {
    pub fn spawn(db: DatabaseConnection) -> (Self, JoinHandle<()>) {
        let (requests, receiver) = mpsc::channel(1024);
        (Self { requests }, tokio::spawn(run(db, receiver)))
    }

    /// Records `rows` as accepted (see [`projection::record_accepted`]); returns the changes,
    /// each with its event number.
    pub async fn record(&self, rows: Vec<ingestion::Model>) -> Result<Vec<Change>, DbErr> {
        let (reply, answer) = oneshot::channel();
        let stopped = || DbErr::Custom("the gateway is shutting down".into());
        self.requests
            .send(Record { rows, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn run(db: DatabaseConnection, mut requests: mpsc::Receiver<Record>) {
    while let Some(first) = requests.recv().await {
        let mut group = vec![first];
        let mut count = group[0].rows.len();
        while count < MAX_ROWS {
            match requests.try_recv() {
                Ok(next) => {
                    count += next.rows.len();
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        let rows: Vec<ingestion::Model> = group.iter().flat_map(|r| r.rows.clone()).collect();
        match projection::record_accepted(&db, rows).await {
            Ok(changes) => {
                let mut by_id: HashMap<String, Change> = changes
                    .into_iter()
                    .map(|change| (change.row.ingestion_id.clone(), change))
                    .collect();
                for record in group {
                    let mine = record
                        .rows
                        .iter()
                        .filter_map(|row| by_id.remove(&row.ingestion_id))
                        .collect();
                    let _ = record.reply.send(Ok(mine));
                }
            }
            Err(error) => {
                let message = error.to_string();
                for record in group {
                    let _ = record.reply.send(Err(DbErr::Custom(message.clone())));
                }
            }
        }
    }
}
