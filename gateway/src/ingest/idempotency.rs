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
//! lookup to recording, so two copies arriving together are written once. Across gateways a key
//! is claimed in the database before the write ([`sluice_core::db::claim`]): the primary key
//! lets one gateway win, and the others wait for its ingestion and answer with it. A request
//! with keys claims before it looks anything up: claims live as long as the window, so a new
//! request costs one insert, and only a held key sends it looking for the ingestions it
//! repeats. Copies without a key racing through two gateways at the same instant can both be
//! written; indexing the same content twice leaves the same points, so the document is still
//! indexed once.
//!
//! Claims of requests that arrive together share one database statement ([group commit]):
//! each is a row to insert, and on SQLite each commit waits for the disk, so one commit per
//! request held Ingest at about 2,400 calls a second on 2 cores. One statement rather than a
//! transaction with a savepoint per request: those were three round trips to the database a
//! request, and at 128 callers the claims' turn on SQLite's one connection outlasted the
//! Kafka transaction.
//!
//! A claim whose write failed is released at once. One left by a gateway that died between
//! claiming and recording is forgotten after [`CLAIM_LEASE`] (twice the Kafka transaction
//! timeout, so its transaction has surely committed or aborted). Only if that gateway died
//! after its commit and the workers have not completed the ingestion within the lease can the
//! key then be written a second time.
//!
//! [group commit]: crate::ingest::group_commit

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sea_orm::{DatabaseConnection, DbErr};
use sluice_core::db::{claim, ingestion, projection};
use sluice_core::kafka::TRANSACTION_TIMEOUT;
use sluice_core::record::{now_ms, DocumentRecord};
use sluice_core::tenant::TenantId;
use tokio::sync::OwnedMutexGuard;
use tokio::task::JoinHandle;

use crate::ingest::group_commit::{Commit, GroupCommit};

/// Requests whose claims share one database transaction, at most.
const MAX_CLAIMS_TOGETHER: usize = 256;

/// How long a claim holds a key with no ingestion recorded under it.
pub const CLAIM_LEASE: Duration = Duration::from_secs(2 * TRANSACTION_TIMEOUT.as_secs());

/// The outcome of claiming a request's keys.
pub enum Claimed {
    /// Ours: write, then keep them (or [`Idempotency::release`] them if the write fails).
    Mine(Vec<(String, String)>),
    /// Another gateway is writing at least one of them: look for its ingestion again.
    Elsewhere,
}

type Locks = Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>;

#[derive(Clone)]
pub struct Idempotency {
    db: DatabaseConnection,
    window: Duration,
    locks: Locks,
    claims: GroupCommit<Claims>,
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
    /// Starts the task that commits claims; it stops once every handle is dropped.
    pub fn spawn(db: DatabaseConnection, window: Duration) -> (Self, JoinHandle<()>) {
        let (claims, task) =
            GroupCommit::spawn("claims", Claims { db: db.clone() }, MAX_CLAIMS_TOGETHER);
        let idempotency = Self {
            db,
            window,
            locks: Arc::default(),
            claims,
        };
        (idempotency, task)
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

    /// Claims the request's keys in the database (see the module's doc).
    pub async fn claim(
        &self,
        tenant: &TenantId,
        records: &[DocumentRecord],
        keys: &[Option<String>],
    ) -> Result<Claimed, DbErr> {
        let claims = claims(records, keys);
        let Some((key, ingestion_id)) = claims.first().cloned() else {
            return Ok(Claimed::Mine(claims));
        };
        // The wait includes the group commit's queue: on SQLite a claim also waits for the
        // write lock that the previous request's recording may hold.
        let started = std::time::Instant::now();
        let answer = self
            .claims
            .submit(vec![claim::Wanted {
                tenant: tenant.as_str().to_owned(),
                key,
                ingestion_id,
            }])
            .await
            .map_err(|_| DbErr::Custom("the gateway is shutting down".into()))?;
        metrics::histogram!("sluice_gateway_database_duration_seconds", "operation" => "claim")
            .record(started.elapsed().as_secs_f64());
        let mine = answer.map_err(|error| DbErr::Custom(error.to_string()))?;
        if mine.first() == Some(&true) {
            Ok(Claimed::Mine(claims))
        } else {
            Ok(Claimed::Elsewhere)
        }
    }

    /// Forgets the request's claims that are older than [`CLAIM_LEASE`]. Only for keys with
    /// no ingestion recorded under them (the caller looked, with [`Self::repeated`]): a claim
    /// whose ingestions are recorded is what makes a later repeat find them.
    pub async fn forget_stale(
        &self,
        tenant: &TenantId,
        records: &[DocumentRecord],
        keys: &[Option<String>],
    ) -> Result<(), DbErr> {
        let named: Vec<String> = claims(records, keys)
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        let before = now_ms() - CLAIM_LEASE.as_millis() as i64;
        for stale in claim::held(&self.db, tenant.as_str(), &named).await? {
            if stale.claimed_at_ms < before && claim::forget(&self.db, &stale).await? {
                tracing::warn!(tenant = %tenant, key = %stale.key, ingestion_id = %stale.ingestion_id, "idempotency claim left behind past its lease forgotten");
            }
        }
        Ok(())
    }

    /// Gives back keys whose write failed, so that a retry can write them.
    pub async fn release(&self, tenant: &TenantId, claims: &[(String, String)]) {
        if let Err(error) = claim::release(&self.db, tenant.as_str(), claims).await {
            // The claim then lapses after CLAIM_LEASE; until then retries are told to wait.
            tracing::warn!(error = %sluice_core::telemetry::Chain(&error), "idempotency claims not released");
        }
    }
}

/// Commits the claims of requests that arrive together in one database statement.
struct Claims {
    db: DatabaseConnection,
}

impl Commit for Claims {
    type Item = claim::Wanted;
    /// Whether the request holds its key now.
    type Output = bool;
    /// Shared (DbErr cannot be cloned) by every request of the group.
    type Error = Arc<DbErr>;

    async fn commit(&mut self, wanted: &[Self::Item]) -> Result<Vec<bool>, Arc<DbErr>> {
        claim::claim(&self.db, wanted, now_ms())
            .await
            .map_err(Arc::new)
    }
}

/// The claims a request takes: its first record's key, with that record's ingestion. A
/// request's keys all come from its one key (IngestBatch's `key#i`), so claiming the first
/// claims the request: one row however large the batch.
fn claims(records: &[DocumentRecord], keys: &[Option<String>]) -> Vec<(String, String)> {
    records
        .iter()
        .zip(keys)
        .take(1)
        .filter_map(|(record, key)| Some((key.clone()?, record.ingestion_id.clone())))
        .collect()
}
