//! Recognises repeated requests, so that a retry returns the first ingestion instead of
//! writing the document again.
//!
//! Within the configured window a request repeats an earlier one when it carries the same
//! idempotency key; or, without a key, when it would write the same document the same way
//! (same content hash) and that earlier ingestion is still the document's latest and has not
//! failed (a client re-sending after a failure wants another try, and after a later change the
//! re-send is a change of its own).
//!
//! Within one gateway, requests with the same key (or the same document) take turns from
//! lookup to commit, so two copies arriving together are written once. Copies racing through
//! two gateway instances at the same instant can both be written; indexing the same content
//! twice leaves the same points, so the document is still indexed once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sea_orm::{DatabaseConnection, DbErr};
use sluice_core::db::{ingestion, projection};
use sluice_core::record::{now_ms, DocumentRecord};
use sluice_core::tenant::TenantId;
use tokio::sync::OwnedMutexGuard;

type Locks = Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>;

pub struct Idempotency {
    db: DatabaseConnection,
    window: Duration,
    locks: Locks,
}

/// Held while a request looks up and writes; the next copy of it waits.
pub struct Turn {
    names: Vec<String>,
    guards: Vec<OwnedMutexGuard<()>>,
    locks: Locks,
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.guards.clear();
        let mut locks = self.locks.lock().expect("idempotency locks");
        for name in &self.names {
            // Nobody else holds or waits for it (waiters clone it under this lock): forget it.
            if locks
                .get(name)
                .is_some_and(|lock| Arc::strong_count(lock) == 1)
            {
                locks.remove(name);
            }
        }
    }
}

impl Idempotency {
    pub fn new(db: DatabaseConnection, window: Duration) -> Self {
        Self {
            db,
            window,
            locks: Arc::default(),
        }
    }

    /// Waits for the turn of these records (by key when given, else by document).
    pub async fn turn(
        &self,
        tenant: &TenantId,
        records: &[DocumentRecord],
        keys: &[Option<String>],
    ) -> Turn {
        let mut names: Vec<String> = records
            .iter()
            .zip(keys)
            .map(|(record, key)| match key {
                Some(key) => format!("key/{tenant}/{key}"),
                None => format!("document/{tenant}/{}", record.document_id),
            })
            .collect();
        // One order for everybody, so two batches cannot wait for each other.
        names.sort();
        names.dedup();
        let waiting: Vec<Arc<tokio::sync::Mutex<()>>> = {
            let mut locks = self.locks.lock().expect("idempotency locks");
            names
                .iter()
                .map(|name| locks.entry(name.clone()).or_default().clone())
                .collect()
        };
        let mut guards = Vec::with_capacity(waiting.len());
        for lock in waiting {
            guards.push(lock.lock_owned().await);
        }
        Turn {
            names,
            guards,
            locks: self.locks.clone(),
        }
    }

    /// The ingestions these records repeat, in order, when every one of them is a repeat.
    pub async fn repeated(
        &self,
        tenant: &TenantId,
        records: &[DocumentRecord],
        keys: &[Option<String>],
    ) -> Result<Option<Vec<ingestion::Model>>, DbErr> {
        let since = now_ms() - self.window.as_millis() as i64;
        let named: Vec<String> = keys.iter().flatten().cloned().collect();
        if !named.is_empty() {
            let rows =
                projection::find_by_idempotency_keys(&self.db, tenant.as_str(), &named, since)
                    .await?;
            return Ok(named
                .iter()
                .map(|key| {
                    rows.iter()
                        .find(|row| row.idempotency_key.as_deref() == Some(key.as_str()))
                        .cloned()
                })
                .collect());
        }
        let mut repeats = Vec::with_capacity(records.len());
        for record in records {
            let latest =
                projection::latest_of_document(&self.db, tenant.as_str(), &record.document_id)
                    .await?;
            match latest {
                Some(row)
                    if row.content_hash.as_deref() == Some(record.content_hash().as_str())
                        && row.accepted_at_ms >= since
                        && row.state != ingestion::FAILED =>
                {
                    repeats.push(row)
                }
                _ => return Ok(None),
            }
        }
        Ok(Some(repeats))
    }
}
