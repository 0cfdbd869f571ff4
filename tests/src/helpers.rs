//! Small helpers: requests as a tenant, documents, reading statuses, waiting for events.

use std::time::Duration;

use sluice_core::proto::ingest_service_client::IngestServiceClient;
use sluice_core::proto::{document::Payload, Document, Ingestion, IngestionState};
use tonic::transport::Channel;

/// A request acting for `tenant` (development-mode header).
pub fn as_tenant<T>(tenant: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        sluice_gateway::tenancy::auth::TENANT_HEADER,
        tenant.parse().expect("ascii tenant"),
    );
    request
}

/// A document in the default schema, as Avro JSON.
pub fn document(id: &str, title: &str, text: &str) -> Document {
    let json = serde_json::json!({ "title": title, "text": text, "source": "tests" });
    Document {
        document_id: id.into(),
        payload: Some(Payload::AvroJson(json.to_string())),
        ..Default::default()
    }
}

pub fn state(ingestion: &Ingestion) -> IngestionState {
    IngestionState::try_from(ingestion.state).unwrap_or(IngestionState::Unspecified)
}

/// The google.rpc.BadRequest field paths of an INVALID_ARGUMENT status.
pub fn bad_request_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// Asks GetIngestion (as `tenant`, through the development header) until the ingestion has
/// ended; panics after `timeout`.
pub async fn ended(
    ingest: &IngestServiceClient<Channel>,
    tenant: &str,
    ingestion_id: &str,
    timeout: Duration,
) -> Ingestion {
    eventually(ingestion_id, timeout, || {
        let mut ingest = ingest.clone();
        let request = as_tenant(
            tenant,
            sluice_core::proto::GetIngestionRequest {
                ingestion_id: ingestion_id.to_owned(),
            },
        );
        async move {
            let ingestion = ingest.get_ingestion(request).await.ok()?.into_inner();
            (state(&ingestion) != IngestionState::Accepted).then_some(ingestion)
        }
    })
    .await
}

/// Asserts that each of `documents` has exactly `points` points in the store.
pub async fn assert_points(
    store: &dyn sluice_core::vector::VectorStore,
    tenant: &str,
    documents: impl IntoIterator<Item = String>,
    points: u64,
) {
    for document in documents {
        let count = store
            .count_document(tenant, &document)
            .await
            .expect("count points");
        assert_eq!(count, points, "points of {document}");
    }
}

/// How long to wait before retrying a call refused over the tenant's rate
/// (RESOURCE_EXHAUSTED), as its google.rpc.RetryInfo advises; `None` for any other refusal.
pub fn rate_retry_delay(status: &tonic::Status) -> Option<Duration> {
    use tonic_types::StatusExt;
    (status.code() == tonic::Code::ResourceExhausted).then(|| {
        status
            .get_details_retry_info()
            .and_then(|info| info.retry_delay)
            .unwrap_or(Duration::from_millis(100))
    })
}

/// Polls `check` until it returns Some, or panics after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// GET `url` on loopback: the status code and the body.
pub async fn http_get(url: &str) -> (u16, String) {
    // curl is on every machine this runs on; it keeps an HTTP client out of the dependencies.
    let output = tokio::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--max-time",
            "20",
            url,
        ])
        .output()
        .await
        .expect("curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (code.trim().parse().expect("status code"), body.to_owned())
}

/// Sends one IngestBatch as `tenant` (development header) and returns the ingestion ids, in
/// the documents' order; panics on a refusal.
pub async fn ingest_batch(
    client: &IngestServiceClient<Channel>,
    tenant: &str,
    documents: Vec<Document>,
    idempotency_key: &str,
) -> Vec<String> {
    let request = as_tenant(
        tenant,
        sluice_core::proto::IngestBatchRequest {
            documents,
            idempotency_key: idempotency_key.to_owned(),
        },
    );
    client
        .clone()
        .ingest_batch(request)
        .await
        .unwrap_or_else(|status| panic!("IngestBatch as {tenant}: {status:?}"))
        .into_inner()
        .ingestions
        .into_iter()
        .map(|ingestion| ingestion.ingestion_id)
        .collect()
}

/// The sum of a metric's samples in a Prometheus text exposition: every series of `name`
/// whose labels contain each of `labels` (`tenant="acme"`, say).
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| {
            line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} "))
        })
        .filter(|line| labels.iter().all(|l| line.contains(l)))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Milliseconds at quantile `q` (0 to 1) of `sorted` durations, the nearest rank; the benches'
/// p50 and p99.
pub fn quantile_ms(sorted: &[std::time::Duration], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1000.0
}

/// The ingestions' rows once every one has ended (left ACCEPTED), looking every 500 ms;
/// panics after `timeout`, saying how many had ended.
pub async fn ended_rows(
    database: &sea_orm::DatabaseConnection,
    tenant: &str,
    ids: &[String],
    timeout: std::time::Duration,
) -> Vec<sluice_core::db::ingestion::Model> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let rows = sluice_core::db::projection::get_many(database, tenant, ids)
            .await
            .expect("read the ingestions");
        let ended = rows.iter().filter(|r| r.state != "accepted").count();
        if ended == ids.len() {
            return rows;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{ended} of {} ingestions ended",
            ids.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// How many terminal events (INDEXED, FAILED, DELETED) each ingestion has in the event log
/// that watch streams read: exactly one is the promise.
pub async fn terminal_events(
    database: &sea_orm::DatabaseConnection,
) -> std::collections::HashMap<String, i64> {
    use sea_orm::{ConnectionTrait, Statement};
    database
        .query_all(Statement::from_string(
            database.get_database_backend(),
            "SELECT ingestion_id, COUNT(*) FROM ingestion_events WHERE state <> 'accepted' GROUP BY ingestion_id",
        ))
        .await
        .expect("count terminal events")
        .into_iter()
        .map(|row| {
            (
                row.try_get_by_index(0).expect("ingestion id"),
                row.try_get_by_index(1).expect("count"),
            )
        })
        .collect()
}
