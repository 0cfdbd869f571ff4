//! `sluice.v1.IngestService`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use prost::Message;
use sea_orm::DatabaseConnection;
use sluice_core::db::{ingestion, projection};
use sluice_core::proto::ingest_service_server::IngestService;
use sluice_core::proto::{
    DeleteDocumentRequest, DeleteDocumentResponse, GetIngestionRequest, IngestBatchRequest,
    IngestBatchResponse, IngestRequest, IngestResponse, Ingestion, IngestionEvent, IngestionState,
    KafkaPosition, Operation, WatchIngestionsRequest,
};
use sluice_core::record::DocumentRecord;
use sluice_core::tenant::TenantId;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status};

use crate::appender::Appender;
use crate::auth::Authenticator;
use crate::hub::{is_terminal, Hub, TenantEvent};
use crate::quota::QuotaGate;
use crate::status::{self, invalid_argument, Violation};
use crate::validate::{self, Validator};

/// How long `wait = true` waits when the client set no deadline.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);
/// A waiting call answers this much before the client's deadline, so the answer (naming the
/// ingestion) arrives before the client gives up.
const DEADLINE_MARGIN: Duration = Duration::from_millis(100);

pub struct IngestApi {
    pub auth: Authenticator,
    pub quotas: Arc<QuotaGate>,
    pub validator: Validator,
    pub appender: Appender,
    pub db: DatabaseConnection,
    pub hub: Hub,
    pub max_batch_documents: usize,
    /// Cancelled when the gateway shuts down: open watch streams and waiting calls end then,
    /// so graceful shutdown is not held up by streams that would never finish.
    pub shutdown: CancellationToken,
}

impl IngestApi {
    /// Writes the records in one transaction, records them as accepted and tells watchers.
    /// Returns OK only once the transaction committed.
    async fn accept(
        &self,
        records: &[DocumentRecord],
        idempotency_keys: Vec<Option<String>>,
    ) -> Result<Vec<Ingestion>, Status> {
        let positions = self
            .appender
            .append(records)
            .await
            .map_err(|e| status::transaction_failed(&e))?;
        let rows: Vec<ingestion::Model> = records
            .iter()
            .zip(positions)
            .zip(idempotency_keys)
            .map(|((record, position), idempotency_key)| ingestion::Model {
                ingestion_id: record.ingestion_id.clone(),
                tenant: record.tenant.to_string(),
                document_id: record.document_id.clone(),
                operation: record.operation.as_str().to_owned(),
                state: ingestion::ACCEPTED.to_owned(),
                kafka_topic: position.topic,
                kafka_partition: position.partition,
                kafka_offset: position.offset,
                chunk_count: 0,
                failure_reason: None,
                idempotency_key,
                accepted_at_ms: record.accepted_at_ms,
                completed_at_ms: None,
            })
            .collect();
        // The records are durably in Kafka: the client hears OK even if the projection lags;
        // the completion will create the row.
        if let Err(error) = projection::record_accepted(&self.db, rows.clone()).await {
            tracing::error!(%error, "accepted ingestions not recorded; completions will fill them in");
        }
        let ingestions: Vec<Ingestion> = rows.iter().map(to_proto).collect();
        for ingestion in &ingestions {
            self.hub
                .publish(records[0].tenant.as_str(), ingestion.clone());
        }
        Ok(ingestions)
    }

    /// The ingestions a repeated request already created, in the order of `keys`, when every
    /// key is known.
    async fn replayed(
        &self,
        tenant: &TenantId,
        keys: &[String],
    ) -> Result<Option<Vec<Ingestion>>, Status> {
        if keys.is_empty() {
            return Ok(None);
        }
        let rows = projection::find_by_idempotency_keys(&self.db, tenant.as_str(), keys)
            .await
            .map_err(status::database)?;
        let ordered: Option<Vec<Ingestion>> = keys
            .iter()
            .map(|key| {
                rows.iter()
                    .find(|r| r.idempotency_key.as_deref() == Some(key.as_str()))
                    .map(to_proto)
            })
            .collect();
        Ok(ordered)
    }

    /// Waits for the ingestion to end, within the client's deadline.
    async fn wait_for_end(
        &self,
        tenant: &TenantId,
        mut events: broadcast::Receiver<TenantEvent>,
        ingestion: Ingestion,
        deadline: Option<Instant>,
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
        wait: bool,
        deadline: Option<Instant>,
    ) -> Result<Ingestion, Status> {
        let replay = self.replayed(tenant, idempotency_key.as_slice()).await?;
        // Subscribe before writing so the completion cannot slip past.
        let events = wait.then(|| self.hub.subscribe());
        let ingestion = match replay {
            Some(mut replayed) => replayed.remove(0),
            None => self
                .accept(std::slice::from_ref(&record), vec![idempotency_key])
                .await?
                .remove(0),
        };
        match events {
            Some(events) if !is_terminal(&ingestion) => {
                self.wait_for_end(tenant, events, ingestion, deadline).await
            }
            _ => Ok(ingestion),
        }
    }
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
        let request = request.into_inner();
        let key = validate::idempotency_key(&request.idempotency_key, "idempotency_key")
            .map_err(|v| invalid_argument(&v))?;
        let document = request
            .document
            .ok_or_else(|| invalid_argument(&[Violation::new("document", "required")]))?;
        let size = document.encoded_len();
        self.quotas.payload_size(&caller, "document", size)?;
        self.quotas.admit(&caller, 1, size)?;
        let tenant = caller.tenant;
        let record = self
            .validator
            .document(&tenant, document, "document")
            .map_err(|v| invalid_argument(&v))?;
        let ingestion = self
            .accept_one(&tenant, record, key, request.wait, deadline)
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
        self.quotas.admit(&caller, count, total)?;
        let tenant = caller.tenant;
        // Validate everything first: one bad document rejects the whole batch, naming it.
        let mut records = Vec::with_capacity(count);
        let mut violations = Vec::new();
        for (i, document) in request.documents.into_iter().enumerate() {
            match self
                .validator
                .document(&tenant, document, &format!("documents[{i}]"))
            {
                Ok(record) => records.push(record),
                Err(v) => violations.extend(v),
            }
        }
        if !violations.is_empty() {
            return Err(invalid_argument(&violations));
        }
        // Per-document keys derived from the batch key, so a replayed batch finds them all.
        let keys: Vec<Option<String>> = (0..count)
            .map(|i| key.as_ref().map(|k| format!("{k}#{i}")))
            .collect();
        let lookup: Vec<String> = keys.iter().flatten().cloned().collect();
        if let Some(ingestions) = self.replayed(&tenant, &lookup).await? {
            return Ok(Response::new(IngestBatchResponse { ingestions }));
        }
        let ingestions = self.accept(&records, keys).await?;
        Ok(Response::new(IngestBatchResponse { ingestions }))
    }

    async fn delete_document(
        &self,
        request: Request<DeleteDocumentRequest>,
    ) -> Result<Response<DeleteDocumentResponse>, Status> {
        let caller = self.auth.caller(&request)?;
        // A deletion travels through Kafka like a document, so it counts as one.
        self.quotas.admit(&caller, 1, 0)?;
        let tenant = caller.tenant;
        let deadline = deadline_of(&request);
        let request = request.into_inner();
        let key = validate::idempotency_key(&request.idempotency_key, "idempotency_key")
            .map_err(|v| invalid_argument(&v))?;
        let record = self
            .validator
            .deletion(&tenant, &request.document_id)
            .map_err(|v| invalid_argument(&v))?;
        let ingestion = self
            .accept_one(&tenant, record, key, request.wait, deadline)
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
        let row = projection::get(&self.db, tenant.as_str(), &id)
            .await
            .map_err(status::database)?;
        // Another tenant's ingestion is as unknown as one that never existed.
        let row = row.ok_or_else(|| Status::not_found(format!("no ingestion {id}")))?;
        Ok(Response::new(to_proto(&row)))
    }

    type WatchIngestionsStream = WatchStream;

    async fn watch_ingestions(
        &self,
        request: Request<WatchIngestionsRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let caller = self.auth.caller(&request)?;
        // Held for as long as the stream is open.
        let permit = self.quotas.open_watch(&caller)?;
        let tenant = caller.tenant;
        let ids = request.into_inner().ingestion_ids;
        // Subscribe first, then read the current state: nothing can fall in between.
        let mut events = self.hub.subscribe();
        let mut pending: std::collections::HashSet<String> = ids.iter().cloned().collect();
        let mut snapshot = Vec::new();
        if !ids.is_empty() {
            let rows = projection::get_many(&self.db, tenant.as_str(), &ids)
                .await
                .map_err(status::database)?;
            let unknown: Vec<&String> = ids
                .iter()
                .filter(|id| !rows.iter().any(|r| &r.ingestion_id == *id))
                .collect();
            if !unknown.is_empty() {
                return Err(Status::not_found(format!(
                    "no ingestion {}",
                    unknown
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            for row in rows {
                let ingestion = to_proto(&row);
                if is_terminal(&ingestion) {
                    pending.remove(&ingestion.ingestion_id);
                }
                snapshot.push(IngestionEvent {
                    ingestion: Some(ingestion),
                    event_time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
                });
            }
        }
        let (sender, receiver) = mpsc::channel(256);
        let watch_all = ids.is_empty();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            for event in snapshot {
                if sender.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            while watch_all || !pending.is_empty() {
                let event = tokio::select! {
                    _ = sender.closed() => return,
                    _ = shutdown.cancelled() => {
                        let _ = sender.send(Err(Status::unavailable("gateway is shutting down; watch again"))).await;
                        return;
                    }
                    event = events.recv() => event,
                };
                match event {
                    Ok(event) if event.tenant == tenant.as_str() => {
                        let ingestion = event.ingestion();
                        if !watch_all && !pending.contains(&ingestion.ingestion_id) {
                            continue;
                        }
                        if is_terminal(ingestion) {
                            pending.remove(&ingestion.ingestion_id);
                        }
                        if sender.send(Ok(event.event)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        let _ = sender
                            .send(Err(Status::new(Code::DataLoss, format!("this stream fell behind and missed {missed} events; watch again"))))
                            .await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        let _ = sender
                            .send(Err(Status::unavailable("gateway is shutting down")))
                            .await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
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
        position: Some(KafkaPosition {
            topic: row.kafka_topic.clone(),
            partition: row.kafka_partition,
            offset: row.kafka_offset,
        }),
        chunk_count: row.chunk_count.max(0) as u32,
        failure_reason: row.failure_reason.clone().unwrap_or_default(),
        accepted_at: Some(timestamp(row.accepted_at_ms)),
        completed_at: row.completed_at_ms.map(timestamp),
    }
}

fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// The client's deadline, from the `grpc-timeout` header (e.g. `5S`, `200m`).
pub fn deadline_of<T>(request: &Request<T>) -> Option<Instant> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (amount, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = amount.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    };
    Some(Instant::now() + timeout)
}
