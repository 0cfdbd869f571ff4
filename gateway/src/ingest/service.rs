//! `sluice.v1.IngestService`.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use futures::Stream;
use prost::Message;
use sea_orm::DatabaseConnection;
use sluice_core::db::{ingestion, projection};
use sluice_core::kafka::TransactionError;
use sluice_core::proto::ingest_service_server::IngestService;
use sluice_core::proto::{
    DeleteDocumentRequest, DeleteDocumentResponse, GetIngestionRequest, IngestBatchRequest,
    IngestBatchResponse, IngestRequest, IngestResponse, Ingestion, IngestionEvent, IngestionState,
    Operation, WatchIngestionsRequest,
};
use sluice_core::record::{ingestion_accepted_at, DocumentRecord};
use sluice_core::telemetry::Chain;
use sluice_core::tenant::TenantId;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::ingest::appender::Appender;
use crate::ingest::hub::{self, is_terminal, Hub, TenantEvent};
use crate::ingest::idempotency::{Claimed, Idempotency};
use crate::ingest::recorder::Recorder;
use crate::ingest::validate::{self, Refusal, Validator};
use crate::ingest::watch::{EventTail, WATCH_PAGE};
use crate::services::status::{self, invalid_argument, Violation};
use crate::tenancy::auth::{Authenticator, Credentials};
use crate::tenancy::quota::{QuotaGate, Watcher};

/// How long `wait = true` waits when the client set no deadline.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);
/// A waiting call answers this much before the client's deadline, so the answer (naming the
/// ingestion) arrives before the client gives up.
const DEADLINE_MARGIN: Duration = Duration::from_millis(100);
/// How often a waiting call asks again whether its caller may still call.
const RECHECK: Duration = Duration::from_secs(1);
/// How long a request waits for another gateway that holds its idempotency key to record its
/// ingestion, and how often it looks.
const CLAIM_WAIT: Duration = Duration::from_secs(5);
const CLAIM_POLL: Duration = Duration::from_millis(20);
/// Ingest answers OK once the records are in Kafka and records them in the database just
/// after; for this long after its acceptance GetIngestion and WatchIngestions look again for
/// an ingestion they do not find yet, so a client that asks right after its OK (on any
/// gateway) finds it.
const RECORDING_GRACE: Duration = Duration::from_secs(2);

pub struct IngestApi {
    pub auth: Authenticator,
    pub quotas: Arc<QuotaGate>,
    pub validator: Validator,
    pub appender: Appender,
    pub db: DatabaseConnection,
    pub hub: Hub,
    pub idempotency: Idempotency,
    pub recorder: Recorder,
    pub max_batch_documents: usize,
    /// Cancelled when the gateway shuts down: open watch streams and waiting calls end then,
    /// so graceful shutdown is not held up by streams that would never finish.
    pub shutdown: CancellationToken,
}

impl IngestApi {
    /// Writes the records in one transaction, records them as accepted and tells watchers.
    /// Returns OK only once the transaction committed. A repeat of an earlier request (see
    /// [`Idempotency`]) returns the earlier ingestions and writes nothing.
    async fn accept(
        &self,
        tenant: &TenantId,
        records: &[DocumentRecord],
        idempotency_keys: Vec<Option<String>>,
    ) -> Result<Vec<Ingestion>, Status> {
        // Copies of one request take turns from lookup to commit.
        let turn = self
            .idempotency
            .turn(tenant, records, &idempotency_keys)
            .await;
        // From the lookup to the recording everything runs on its own task: a client that
        // gives up (drops the call) must not leave a claimed key without its write, nor a
        // committed write without its key recorded (its retry would write a second record).
        // The turn is held until all of it is done.
        let write = Write {
            appender: self.appender.clone(),
            recorder: self.recorder.clone(),
            hub: self.hub.clone(),
            idempotency: self.idempotency.clone(),
        };
        let (tenant, mut records) = (tenant.clone(), records.to_vec());
        // The key travels with the record, so the completion can hand it back (see
        // `projection::apply_completion`).
        for (record, key) in records.iter_mut().zip(&idempotency_keys) {
            record.idempotency_key.clone_from(key);
        }
        // The answer comes back as soon as the records are durably in Kafka; the task goes on
        // to record them in the database, still holding the turn, so a repeat of this request
        // finds them recorded.
        let (answer, answered) = oneshot::channel();
        tokio::spawn(
            async move {
                let _turn = turn;
                write
                    .accept(&tenant, &records, idempotency_keys, answer)
                    .await
            }
            .in_current_span(),
        );
        answered
            .await
            .map_err(|_| Status::internal("the write task failed; nothing may have been written"))?
    }

    /// Waits for the ingestion to end, within the client's deadline, while the caller may
    /// still call (checked every [`RECHECK`]).
    async fn wait_for_end(
        &self,
        tenant: &TenantId,
        mut events: broadcast::Receiver<TenantEvent>,
        ingestion: Ingestion,
        deadline: Option<Instant>,
        credentials: Credentials,
    ) -> Result<Ingestion, Status> {
        let until = deadline
            .map(|d| d - DEADLINE_MARGIN)
            .unwrap_or_else(|| Instant::now() + DEFAULT_WAIT);
        let id = ingestion.ingestion_id.clone();
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(event) if event.tenant == tenant.as_str() && event.ingestion().ingestion_id == id && is_terminal(event.ingestion()) => {
                        return Ok(event.ingestion().clone());
                    }
                    Ok(_) => {}
                    // Missed events: the database knows.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if let Some(done) = self.ended(tenant, &id).await? {
                            return Ok(done);
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return Err(Status::unavailable("gateway is shutting down")),
                },
                _ = self.shutdown.cancelled() => {
                    return Err(Status::unavailable(format!(
                        "gateway is shutting down; ingestion {id} is accepted (durably in Kafka), follow it on another instance"
                    )));
                }
                _ = tokio::time::sleep(RECHECK) => credentials.check()?,
                _ = tokio::time::sleep_until(until) => {
                    if let Some(done) = self.ended(tenant, &id).await? {
                        return Ok(done);
                    }
                    return Err(Status::deadline_exceeded(format!(
                        "ingestion {id} is accepted (durably in Kafka) but not finished yet; follow it with WatchIngestions or GetIngestion"
                    )));
                }
            }
        }
    }

    async fn ended(&self, tenant: &TenantId, id: &str) -> Result<Option<Ingestion>, Status> {
        let row = projection::get(&self.db, tenant.as_str(), id)
            .await
            .map_err(status::database)?;
        Ok(row.map(|r| to_proto(&r)).filter(is_terminal))
    }

    /// Accepts one record, optionally waiting for its end; shared by Ingest and DeleteDocument.
    async fn accept_one(
        &self,
        tenant: &TenantId,
        record: DocumentRecord,
        idempotency_key: Option<String>,
        wait: Option<Credentials>,
        deadline: Option<Instant>,
    ) -> Result<Ingestion, Status> {
        // Subscribe before writing so the completion cannot slip past.
        let events = wait.map(|credentials| (self.hub.subscribe(), credentials));
        let ingestion = self
            .accept(tenant, std::slice::from_ref(&record), vec![idempotency_key])
            .await?
            .remove(0);
        match events {
            Some((events, credentials)) if !is_terminal(&ingestion) => {
                self.wait_for_end(tenant, events, ingestion, deadline, credentials)
                    .await
            }
            _ => Ok(ingestion),
        }
    }
}

/// Writes accepted records to Kafka, then records them in the database and tells watchers.
struct Write {
    appender: Appender,
    recorder: Recorder,
    hub: Hub,
    idempotency: Idempotency,
}

impl Write {
    /// Answers with the earlier ingestions when this repeats a request. Otherwise claims the
    /// keys across gateways (while another gateway writes one of them, its ingestion is
    /// looked for again until it is recorded), writes, and gives the keys back if the write
    /// failed.
    async fn accept(
        &self,
        tenant: &TenantId,
        records: &[DocumentRecord],
        idempotency_keys: Vec<Option<String>>,
        answer: Answer,
    ) {
        let claims = match self.claim(tenant, records, &idempotency_keys).await {
            Ok(Claim::Repeat(first)) => {
                let _ = answer.send(Ok(first.iter().map(to_proto).collect()));
                return;
            }
            Ok(Claim::Write(claims)) => claims,
            Err(refused) => {
                let _ = answer.send(Err(refused));
                return;
            }
        };
        if let Err(error) = self.run(tenant, records, idempotency_keys, answer).await {
            tracing::debug!(error = %Chain(&error), "write failed; giving the keys back");
            self.idempotency.release(tenant, &claims).await;
        }
    }

    /// Whether to write, and under which claims. A request with keys claims them first: a
    /// held claim is the common sign of a repeat (claims live as long as the idempotency
    /// window), so a new request costs one database write and no lookup. A request without
    /// keys is a repeat when it would write the same content again.
    async fn claim(
        &self,
        tenant: &TenantId,
        records: &[DocumentRecord],
        idempotency_keys: &[Option<String>],
    ) -> Result<Claim, Status> {
        let repeated = || async {
            self.idempotency
                .repeated(tenant, records, idempotency_keys)
                .await
                .map_err(status::database)
        };
        if idempotency_keys.iter().all(Option::is_none) {
            return Ok(match repeated().await? {
                Some(first) => Claim::Repeat(first),
                None => Claim::Write(Vec::new()),
            });
        }
        let waiting_since = Instant::now();
        loop {
            match self
                .idempotency
                .claim(tenant, records, idempotency_keys)
                .await
                .map_err(status::database)?
            {
                Claimed::Mine(claims) => return Ok(Claim::Write(claims)),
                // Held: by the request this repeats (its ingestions are recorded), or by one
                // being written elsewhere right now (look again until it is recorded).
                Claimed::Elsewhere => {
                    if let Some(first) = repeated().await? {
                        return Ok(Claim::Repeat(first));
                    }
                    // Nothing recorded under the keys: a claim left behind by a gateway that
                    // died mid-write is forgotten once past its lease.
                    self.idempotency
                        .forget_stale(tenant, records, idempotency_keys)
                        .await
                        .map_err(status::database)?;
                    if waiting_since.elapsed() >= CLAIM_WAIT {
                        return Err(status::written_elsewhere());
                    }
                    tokio::time::sleep(CLAIM_POLL).await
                }
            }
        }
    }

    /// Appends the records to Kafka and answers as soon as they are committed; then records
    /// them in the database and tells watchers. An error means nothing was written.
    async fn run(
        &self,
        tenant: &TenantId,
        records: &[DocumentRecord],
        idempotency_keys: Vec<Option<String>>,
        answer: Answer,
    ) -> Result<(), TransactionError> {
        let positions = match self.appender.append(records).await {
            Ok(positions) => positions,
            Err(error) => {
                let _ = answer.send(Err(status::transaction_failed(&error)));
                return Err(error);
            }
        };
        let label = sluice_core::metrics::tenant_label(tenant.as_str());
        let bytes: usize = records.iter().map(|r| r.payload.len()).sum();
        metrics::counter!("sluice_gateway_documents_accepted_total", "tenant" => label.clone())
            .increment(records.len() as u64);
        metrics::counter!("sluice_gateway_bytes_accepted_total", "tenant" => label)
            .increment(bytes as u64);
        let rows: Vec<ingestion::Model> = records
            .iter()
            .zip(positions)
            .zip(idempotency_keys)
            .map(|((record, position), key)| projection::accepted_row(record, position, key))
            .collect();
        // Durably in Kafka: OK now. The database is a projection of the log; until the rows
        // below are recorded, GetIngestion looks again for a moment (see RECORDING_GRACE),
        // and if they never are, the completions create them.
        let _ = answer.send(Ok(rows.iter().map(to_proto).collect()));
        let started = std::time::Instant::now();
        let recorded = self.recorder.record(rows).await;
        metrics::histogram!("sluice_gateway_database_duration_seconds", "operation" => "record_accepted")
            .record(started.elapsed().as_secs_f64());
        match recorded {
            Ok(changes) => {
                for change in changes {
                    self.hub
                        .publish(tenant.as_str(), change.seq, to_proto(&change.row));
                }
            }
            Err(error) => {
                tracing::error!(error = %Chain(&error), "accepted ingestions not recorded; completions will fill them in")
            }
        }
        Ok(())
    }
}

/// Where the write task sends the request's answer.
type Answer = oneshot::Sender<Result<Vec<Ingestion>, Status>>;

/// What [`Write::claim`] decided.
enum Claim {
    /// The request repeats these ingestions: answer with them, write nothing.
    Repeat(Vec<ingestion::Model>),
    /// Write, holding these claims.
    Write(Vec<(String, String)>),
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<IngestionEvent, Status>> + Send>>;

#[tonic::async_trait]
impl IngestService for IngestApi {
    async fn ingest(
        &self,
        request: Request<IngestRequest>,
    ) -> Result<Response<IngestResponse>, Status> {
        let caller = self.auth.caller(&request)?;
        let deadline = deadline_of(&request);
        let credentials = request
            .get_ref()
            .wait
            .then(|| self.auth.credentials(&request));
        let request = request.into_inner();
        let key = validate::idempotency_key(&request.idempotency_key, "idempotency_key")
            .map_err(|v| invalid_argument(&v))?;
        let document = request
            .document
            .ok_or_else(|| invalid_argument(&[Violation::new("document", "required")]))?;
        let size = document.encoded_len();
        self.quotas.payload_size(&caller, "document", size)?;
        // A call that waits holds a watch stream's place while it waits.
        let _waiting = request
            .wait
            .then(|| self.quotas.open_watch(&caller, Watcher::Waiting))
            .transpose()?;
        self.quotas.admit(&caller, 1, size).await?;
        let tenant = caller.tenant;
        let record = self
            .validator
            .document(&tenant, document, "document")
            .await?;
        let ingestion = self
            .accept_one(&tenant, record, key, credentials, deadline)
            .await?;
        Ok(Response::new(IngestResponse {
            ingestion: Some(ingestion),
        }))
    }

    async fn ingest_batch(
        &self,
        request: Request<IngestBatchRequest>,
    ) -> Result<Response<IngestBatchResponse>, Status> {
        let caller = self.auth.caller(&request)?;
        let request = request.into_inner();
        let key = validate::idempotency_key(&request.idempotency_key, "idempotency_key")
            .map_err(|v| invalid_argument(&v))?;
        let count = request.documents.len();
        if count == 0 || count > self.max_batch_documents {
            return Err(invalid_argument(&[Violation::new(
                "documents",
                format!(
                    "{count} documents; a batch holds 1 to {}",
                    self.max_batch_documents
                ),
            )]));
        }
        let mut total = 0;
        for (i, document) in request.documents.iter().enumerate() {
            let size = document.encoded_len();
            self.quotas
                .payload_size(&caller, &format!("documents[{i}]"), size)?;
            total += size;
        }
        self.quotas.admit(&caller, count, total).await?;
        let tenant = caller.tenant;
        // Validate everything first: one bad document rejects the whole batch, naming it.
        let mut records = Vec::with_capacity(count);
        let mut violations = Vec::new();
        for (i, document) in request.documents.into_iter().enumerate() {
            match self
                .validator
                .document(&tenant, document, &format!("documents[{i}]"))
                .await
            {
                Ok(record) => records.push(record),
                Err(Refusal::Invalid(v)) => violations.extend(v),
                Err(unavailable) => return Err(unavailable.into()),
            }
        }
        if !violations.is_empty() {
            return Err(invalid_argument(&violations));
        }
        // Per-document keys derived from the batch key, so a replayed batch finds them all.
        let keys: Vec<Option<String>> = (0..count)
            .map(|i| key.as_ref().map(|k| format!("{k}#{i}")))
            .collect();
        let ingestions = self.accept(&tenant, &records, keys).await?;
        Ok(Response::new(IngestBatchResponse { ingestions }))
    }

    async fn delete_document(
        &self,
        request: Request<DeleteDocumentRequest>,
    ) -> Result<Response<DeleteDocumentResponse>, Status> {
        let caller = self.auth.caller(&request)?;
        // A deletion travels through Kafka like a document, so it counts as one.
        self.quotas.admit(&caller, 1, 0).await?;
        let deadline = deadline_of(&request);
        let credentials = request
            .get_ref()
            .wait
            .then(|| self.auth.credentials(&request));
        let request = request.into_inner();
        let _waiting = request
            .wait
            .then(|| self.quotas.open_watch(&caller, Watcher::Waiting))
            .transpose()?;
        let tenant = caller.tenant;
        let key = validate::idempotency_key(&request.idempotency_key, "idempotency_key")
            .map_err(|v| invalid_argument(&v))?;
        let record = self.validator.deletion(&tenant, &request.document_id)?;
        let ingestion = self
            .accept_one(&tenant, record, key, credentials, deadline)
            .await?;
        Ok(Response::new(DeleteDocumentResponse {
            ingestion: Some(ingestion),
        }))
    }

    async fn get_ingestion(
        &self,
        request: Request<GetIngestionRequest>,
    ) -> Result<Response<Ingestion>, Status> {
        let tenant = self.auth.tenant(&request)?;
        let id = request.into_inner().ingestion_id;
        if id.is_empty() {
            return Err(invalid_argument(&[Violation::new(
                "ingestion_id",
                "required",
            )]));
        }
        let mut recheck = Recheck::new();
        loop {
            let row = projection::get(&self.db, tenant.as_str(), &id)
                .await
                .map_err(status::database)?;
            match row {
                Some(row) => return Ok(Response::new(to_proto(&row))),
                None if recheck.wait(&[&id]).await => {}
                // Another tenant's ingestion is as unknown as one that never existed.
                None => return Err(Status::not_found(format!("no ingestion {id}"))),
            }
        }
    }

    type WatchIngestionsStream = WatchStream;

    async fn watch_ingestions(
        &self,
        request: Request<WatchIngestionsRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let caller = self.auth.caller(&request)?;
        let credentials = self.auth.credentials(&request);
        // Held for as long as the stream is open.
        let permit = self.quotas.open_watch(&caller, Watcher::Stream)?;
        let tenant = caller.tenant;
        let request = request.into_inner();
        let after = hub::parse_cursor(&request.after_cursor)
            .map_err(|problem| invalid_argument(&[Violation::new("after_cursor", problem)]))?;
        let ids = request.ingestion_ids;
        let mut recheck = Recheck::new();
        let (wake, latest, rows) = loop {
            // Subscribe to wake-ups first, then read: nothing can fall in between.
            let wake = self.hub.subscribe();
            let (latest, rows) = projection::snapshot(&self.db, tenant.as_str(), &ids)
                .await
                .map_err(status::database)?;
            let unknown: Vec<&str> = ids
                .iter()
                .filter(|id| !rows.iter().any(|r| &r.ingestion_id == *id))
                .map(String::as_str)
                .collect();
            if unknown.is_empty() {
                break (wake, latest, rows);
            }
            if !recheck.wait(&unknown).await {
                return Err(Status::not_found(format!(
                    "no ingestion {}",
                    unknown.join(", ")
                )));
            }
        };
        let pending: HashSet<String> = rows
            .iter()
            .map(to_proto)
            .filter(|ingestion| !is_terminal(ingestion))
            .map(|ingestion| ingestion.ingestion_id)
            .collect();
        let (start, snapshot) = match after {
            Some(after) => {
                self.check_resumable(&tenant, after, latest).await?;
                (after, Vec::new())
            }
            // From now on: the given ingestions' current state first, as of `latest`.
            None => (
                latest,
                rows.iter()
                    .map(|row| IngestionEvent {
                        ingestion: Some(to_proto(row)),
                        event_time: Some(
                            prost_types::Timestamp::from(std::time::SystemTime::now()),
                        ),
                        cursor: hub::cursor(latest),
                    })
                    .collect(),
            ),
        };
        let (sender, receiver) = mpsc::channel(WATCH_PAGE as usize);
        let tail = EventTail {
            db: self.db.clone(),
            tenant,
            ids: (!ids.is_empty()).then_some(ids),
            pending,
            last: start,
            wake,
            shutdown: self.shutdown.clone(),
            sender,
            credentials,
        };
        tokio::spawn(async move {
            let _permit = permit;
            tail.run(snapshot).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

impl IngestApi {
    /// A cursor can resume when the events after it are still kept.
    async fn check_resumable(
        &self,
        tenant: &TenantId,
        after: i64,
        latest: i64,
    ) -> Result<(), Status> {
        if after > latest {
            return Err(invalid_argument(&[Violation::new(
                "after_cursor",
                "names an event that has not happened",
            )]));
        }
        let oldest = projection::oldest_seq(&self.db, tenant.as_str())
            .await
            .map_err(status::database)?;
        if oldest > after + 1 {
            return Err(Status::out_of_range(
                "the events after this cursor are older than the gateway keeps \
                 (gateway.event_retention_secs); watch without a cursor and use GetIngestion",
            ));
        }
        Ok(())
    }
}

/// The database row → the API's view of it.
pub fn to_proto(row: &ingestion::Model) -> Ingestion {
    let state = match row.state.as_str() {
        ingestion::ACCEPTED => IngestionState::Accepted,
        ingestion::INDEXED => IngestionState::Indexed,
        ingestion::DELETED => IngestionState::Deleted,
        ingestion::FAILED => IngestionState::Failed,
        _ => IngestionState::Unspecified,
    };
    let operation = match row.operation.as_str() {
        "upsert" => Operation::Upsert,
        "delete" => Operation::Delete,
        _ => Operation::Unspecified,
    };
    Ingestion {
        ingestion_id: row.ingestion_id.clone(),
        document_id: row.document_id.clone(),
        operation: operation as i32,
        state: state as i32,
        // Offsets count every tenant's records on a shared partition: not a tenant's to see.
        #[allow(deprecated)]
        position: None,
        chunk_count: row.chunk_count.max(0) as u32,
        failure_reason: row.failure_reason.clone().unwrap_or_default(),
        accepted_at: Some(timestamp(row.accepted_at_ms)),
        completed_at: row.completed_at_ms.map(timestamp),
    }
}

pub(crate) fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// The client's deadline, from the `grpc-timeout` header (e.g. `5S`, `200m`). A value gRPC
/// does not allow (more than 8 digits, an unknown unit) counts as no deadline; no value can
/// overflow.
pub fn deadline_of<T>(request: &Request<T>) -> Option<Instant> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (amount, unit) = value.split_at(value.len().checked_sub(1)?);
    if amount.is_empty() || amount.len() > 8 || !amount.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = amount.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    };
    Instant::now().checked_add(timeout)
}

/// Paces the looks again for ingestions not found in the database (see [`RECORDING_GRACE`]):
/// after 5 ms, then twice as long each time up to 200 ms, so that an id that never shows up
/// costs a dozen queries, not hundreds.
struct Recheck {
    /// Set at the first miss: when looking again stops.
    until: Option<Instant>,
    pauses: ExponentialBackoff,
}

impl Recheck {
    fn new() -> Self {
        Self {
            until: None,
            pauses: ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(5))
                .with_max_delay(Duration::from_millis(200))
                .without_max_times()
                .build(),
        }
    }

    /// Waits before the next look for `missing`; false when there is none to make (then
    /// they are unknown).
    async fn wait(&mut self, missing: &[&str]) -> bool {
        let until = *self
            .until
            .get_or_insert_with(|| recording_deadline(missing).unwrap_or_else(Instant::now));
        let now = Instant::now();
        let Some(pause) = self.pauses.next().filter(|_| now < until) else {
            return false;
        };
        tokio::time::sleep(pause.min(until - now)).await;
        true
    }
}

/// Until when ingestions not found may still be on their way to the database: the latest of
/// their acceptances plus [`RECORDING_GRACE`], never further than that from now whatever an
/// id claims; `None` when none was accepted that recently.
fn recording_deadline(ingestion_ids: &[&str]) -> Option<Instant> {
    let latest = ingestion_ids
        .iter()
        .filter_map(|id| ingestion_accepted_at(id))
        .max()?;
    let left = (latest + RECORDING_GRACE)
        .duration_since(SystemTime::now())
        .ok()?;
    Some(Instant::now() + left.min(RECORDING_GRACE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn with_timeout(value: &str) -> Request<()> {
        let mut request = Request::new(());
        request
            .metadata_mut()
            .insert("grpc-timeout", value.parse().unwrap());
        request
    }

    fn v7_at(at: SystemTime) -> String {
        let since = at.duration_since(UNIX_EPOCH).unwrap();
        let stamp =
            uuid::Timestamp::from_unix(uuid::NoContext, since.as_secs(), since.subsec_nanos());
        uuid::Uuid::new_v7(stamp).to_string()
    }

    #[test]
    fn only_ingestions_accepted_moments_ago_are_looked_for_again_and_never_long() {
        let now = SystemTime::now();
        let fresh = v7_at(now);
        let deadline = recording_deadline(&[&fresh]).expect("just accepted");
        assert!(deadline <= Instant::now() + RECORDING_GRACE);
        assert!(deadline > Instant::now() + RECORDING_GRACE - Duration::from_millis(500));
        // An id from the far future is looked for no longer than any other.
        let future = v7_at(now + Duration::from_secs(3600));
        assert!(recording_deadline(&[&future]).unwrap() <= Instant::now() + RECORDING_GRACE);
        let old = v7_at(now - Duration::from_secs(3));
        for unknown in [
            old.as_str(),
            "not-an-id",
            "",
            "0b7d3e4e-9c0a-4b8e-8d1e-1f2a3b4c5d6e", // v4
        ] {
            assert_eq!(recording_deadline(&[unknown]), None, "{unknown:?}");
        }
        // The latest acceptance decides.
        assert!(recording_deadline(&[&old, &fresh]).is_some());
    }

    #[tokio::test]
    async fn looking_again_is_paced_and_bounded() {
        let mut recheck = Recheck::new();
        recheck.until = Some(Instant::now() + Duration::from_millis(400));
        let started = Instant::now();
        let mut looks = 0;
        while recheck.wait(&[]).await {
            looks += 1;
            assert!(looks < 20, "unbounded");
        }
        // 5 + 10 + 20 + 40 + 80 + 160 + the rest (85): 7 looks, not 40 at 10 ms.
        assert!((5..=8).contains(&looks), "{looks} looks");
        assert!(started.elapsed() >= Duration::from_millis(400));
        assert!(started.elapsed() < Duration::from_millis(1000));
        // An id accepted long ago is not looked for at all.
        let old = v7_at(SystemTime::now() - Duration::from_secs(60));
        assert!(!Recheck::new().wait(&[&old]).await);
    }

    #[test]
    fn any_grpc_timeout_is_a_deadline_or_none_and_never_panics() {
        let now = Instant::now();
        let deadline = deadline_of(&with_timeout("5S")).expect("5 seconds");
        assert!(deadline >= now + Duration::from_secs(5));
        assert!(deadline_of(&with_timeout("99999999H")).is_some());
        for hostile in [
            "999999999H",
            "18446744073709551615H",
            "-1S",
            "+1S",
            "1",
            "S",
            "",
            "1x",
            "0n",
        ] {
            // "0n" is a valid, already expired deadline; the rest are none.
            let deadline = deadline_of(&with_timeout(hostile));
            assert_eq!(deadline.is_some(), hostile == "0n", "{hostile:?}");
        }
    }
}
