//! Running Sluice: a real grpcurl, health, worker restarts, faults in the broker and the
//! vector store, and deadlines.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sluice_core::proto::{
    IngestBatchRequest, IngestRequest, IngestionState, WatchIngestionsRequest,
};
use sluice_core::vector::{IndexedDocument, VectorHit, VectorQuery, VectorStore, VectorStoreError};
use sluice_gateway::server::{Gateway, Shared};
use sluice_tests::{as_tenant, document, http_get, state, test_config, Broker, Database, Stack};
use tokio_stream::StreamExt;

const TENANT: &str = "acme";

fn grpcurl(stack: &Stack, args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new(sluice_tests::grpcurl())
        .arg("-plaintext")
        .args(args)
        .output()
        .expect("run grpcurl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let _ = stack;
    (output.status.success(), text)
}

/// grpcurl, knowing nothing but the address: lists the services by reflection, ingests, searches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_ingests_and_searches() {
    let stack = Stack::start(Database::Sqlite).await;
    let addr = stack.standalone().gateway.grpc_addr.to_string();

    let (ok, listing) = grpcurl(&stack, &[&addr, "list"]);
    assert!(ok, "{listing}");
    for service in [
        "sluice.v1.IngestService",
        "sluice.v1.SearchService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            listing.lines().any(|l| l == service),
            "{service} missing from:\n{listing}"
        );
    }

    let payload = serde_json::json!({ "title": "Glaciers", "text": "Glaciers are slow rivers of ice that shape mountains and valleys." });
    let body = serde_json::json!({ "document": { "documentId": "glacier", "avroJson": payload.to_string() }, "wait": true }).to_string();
    let (ok, out) = grpcurl(
        &stack,
        &[
            "-H",
            "x-sluice-tenant: acme",
            "-max-time",
            "60",
            "-d",
            &body,
            &addr,
            "sluice.v1.IngestService/Ingest",
        ],
    );
    assert!(ok, "{out}");
    let response: serde_json::Value = serde_json::from_str(&out).expect("JSON response");
    assert_eq!(
        response["ingestion"]["state"], "INGESTION_STATE_INDEXED",
        "{out}"
    );
    assert_eq!(response["ingestion"]["chunkCount"], 1, "{out}");

    let (ok, out) = grpcurl(
        &stack,
        &[
            "-H",
            "x-sluice-tenant: acme",
            "-d",
            r#"{"query": "ice shaping mountains", "topK": 1}"#,
            &addr,
            "sluice.v1.SearchService/Search",
        ],
    );
    assert!(ok, "{out}");
    let response: serde_json::Value = serde_json::from_str(&out).expect("JSON response");
    assert_eq!(response["hits"][0]["documentId"], "glacier", "{out}");

    // A bad request shows the field in grpcurl's error output.
    let bad = serde_json::json!({ "document": { "documentId": "x", "avroJson": "{\"text\": 5}" } })
        .to_string();
    let (ok, out) = grpcurl(
        &stack,
        &[
            "-H",
            "x-sluice-tenant: acme",
            "-d",
            &bad,
            &addr,
            "sluice.v1.IngestService/Ingest",
        ],
    );
    assert!(!ok);
    assert!(
        out.contains("InvalidArgument") && out.contains("document.avro_json.text"),
        "{out}"
    );
    stack.shutdown().await;
}

/// `/healthz` reports each dependency; gRPC health says SERVING; with the broker gone both
/// say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_each_dependency() {
    let mut stack = Stack::start(Database::Sqlite).await;
    let url = format!("http://{}/healthz", stack.standalone().gateway.health_addr);

    let (code, report) = http_get(&url).await;
    assert_eq!(code, 200, "{report}");
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["status"], "up");
    for dependency in ["broker", "database", "vector_store", "model"] {
        assert_eq!(
            report["dependencies"][dependency]["status"], "up",
            "{dependency}: {report}"
        );
    }
    assert_eq!(
        report["dependencies"]["vector_store"]["detail"],
        "qdrant-edge"
    );

    let mut health = tonic_health::pb::health_client::HealthClient::new(stack.channel().await);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "sluice.v1.IngestService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        serving.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    stack.broker.kill();
    let (code, report) = http_get(&url).await;
    assert_eq!(code, 503, "{report}");
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(
        report["dependencies"]["broker"]["status"], "down",
        "{report}"
    );
    assert_eq!(
        report["dependencies"]["database"]["status"], "up",
        "{report}"
    );
    stack.shutdown().await;
}

/// A worker killed mid-stream loses nothing: the next one resumes from the committed offsets
/// and every ingestion ends exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_resumes_from_committed_offsets() {
    let mut stack = Stack::start(Database::Sqlite).await;
    let mut ingest = stack.ingest_client().await;
    let mut watch = ingest
        .watch_ingestions(as_tenant(TENANT, WatchIngestionsRequest::default()))
        .await
        .unwrap()
        .into_inner();

    let documents: Vec<_> = (0..24)
        .map(|i| {
            document(
                &format!("doc-{i}"),
                "Numbers",
                &format!("Document number {i} talks about the number {i} and nothing else."),
            )
        })
        .collect();
    let accepted = ingest
        .ingest_batch(as_tenant(
            TENANT,
            IngestBatchRequest {
                documents,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .ingestions;
    assert_eq!(accepted.len(), 24);

    // Let some be indexed, then crash the worker in the middle of the stream.
    let mut terminal: HashMap<String, u32> = HashMap::new();
    while terminal.len() < 3 {
        let ingestion = watch.next().await.unwrap().unwrap().ingestion.unwrap();
        if state(&ingestion) == IngestionState::Indexed {
            *terminal.entry(ingestion.ingestion_id).or_default() += 1;
        }
    }
    stack.standalone_mut().crash_worker();
    let indexed_before_restart = terminal.len();
    stack.standalone_mut().start_worker().unwrap();

    tokio::time::timeout(Duration::from_secs(180), async {
        while terminal.len() < 24 {
            let ingestion = watch.next().await.unwrap().unwrap().ingestion.unwrap();
            if state(&ingestion) == IngestionState::Indexed {
                *terminal.entry(ingestion.ingestion_id).or_default() += 1;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of 24 indexed", terminal.len()));
    assert!(
        terminal.values().all(|&n| n == 1),
        "one terminal event per ingestion: {terminal:?}"
    );
    assert!(indexed_before_restart < 24, "the crash came mid-stream");
    sluice_tests::assert_points(
        stack.standalone().shared.store.as_ref(),
        TENANT,
        (0..24).map(|i| format!("doc-{i}")),
        1,
    )
    .await;
    // No stray terminal events arrive late.
    let late = tokio::time::timeout(Duration::from_secs(2), watch.next()).await;
    assert!(late.is_err(), "unexpected event {late:?}");
    stack.shutdown().await;
}

/// `wait = true` past the deadline: DEADLINE_EXCEEDED naming the ingestion, which is still
/// accepted and finishes once a worker runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_past_the_deadline_names_the_ingestion() {
    let mut stack = Stack::start(Database::Sqlite).await;
    stack.standalone_mut().stop_worker().await;
    let mut ingest = stack.ingest_client().await;
    let mut request = as_tenant(
        TENANT,
        IngestRequest {
            document: Some(document("late", "Late", "Arrives later.")),
            wait: true,
            ..Default::default()
        },
    );
    request.set_timeout(Duration::from_millis(1500));
    let status = ingest.ingest(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    let id = status
        .message()
        .split_whitespace()
        .nth(1)
        .expect("names the ingestion")
        .to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{}", status.message());

    stack.standalone_mut().start_worker().unwrap();
    let mut watch = ingest
        .watch_ingestions(as_tenant(
            TENANT,
            WatchIngestionsRequest {
                ingestion_ids: vec![id.clone()],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut states = Vec::new();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(60), watch.next())
        .await
        .expect("stream ends")
    {
        states.push(state(&event.unwrap().ingestion.unwrap()));
    }
    // Current state first, then its end; the stream closes by itself.
    assert_eq!(states, [IngestionState::Accepted, IngestionState::Indexed]);
    stack.shutdown().await;
}

/// With the broker gone, Ingest is never OK: UNAVAILABLE or ABORTED, with retry advice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_unavailable_never_ok() {
    let mut stack = Stack::start(Database::Sqlite).await;
    let mut ingest = stack.ingest_client().await;
    stack.broker.kill();
    for i in 0..2 {
        let status = ingest
            .ingest(as_tenant(
                TENANT,
                IngestRequest {
                    document: Some(document(&format!("d{i}"), "T", "text")),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert!(
            matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::Aborted
            ),
            "{status:?}"
        );
        use tonic_types::StatusExt;
        assert!(status.get_details_retry_info().is_some(), "{status:?}");
    }
    stack.shutdown().await;
}

/// A vector store that fails the first `failures` writes of each document, then works.
struct FlakyStore {
    inner: Arc<dyn VectorStore>,
    failures: u32,
    attempts: std::sync::Mutex<HashMap<String, u32>>,
    calls: AtomicU32,
    /// Until set, documents named `doomed…` always fail.
    healed: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl VectorStore for FlakyStore {
    fn kind(&self) -> &'static str {
        "flaky"
    }
    /// One document at a time; the first failure ends the batch.
    async fn index_documents(
        &self,
        documents: Vec<IndexedDocument>,
    ) -> Result<(), VectorStoreError> {
        for document in documents {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let attempt = {
                let mut attempts = self.attempts.lock().unwrap();
                let n = attempts.entry(document.document_id.clone()).or_default();
                *n += 1;
                *n
            };
            let doomed =
                document.document_id.starts_with("doomed") && !self.healed.load(Ordering::SeqCst);
            if doomed || attempt <= self.failures {
                return Err(VectorStoreError::unavailable(format!(
                    "injected failure {attempt}"
                )));
            }
            self.inner.index_document(document).await?;
        }
        Ok(())
    }
    async fn delete_document(
        &self,
        tenant: &str,
        document_id: &str,
    ) -> Result<u64, VectorStoreError> {
        self.inner.delete_document(tenant, document_id).await
    }
    async fn search(&self, query: VectorQuery) -> Result<Vec<VectorHit>, VectorStoreError> {
        self.inner.search(query).await
    }
    async fn count_document(
        &self,
        tenant: &str,
        document_id: &str,
    ) -> Result<u64, VectorStoreError> {
        self.inner.count_document(tenant, document_id).await
    }
    async fn health(&self) -> Result<(), VectorStoreError> {
        self.inner.health().await
    }
}

/// Vector store failures are retried a bounded number of times; a document that keeps
/// failing ends FAILED with the reason and goes to the dead-letter topic, and the worker goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_failures_are_retried_then_fail_with_the_reason() {
    sluice_core::telemetry::init(&Default::default(), "sluice-tests");
    let broker = Broker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(&broker, dir.path(), Database::Sqlite).await;
    let shared = Shared::open(&config).await.unwrap();
    let gateway = Gateway::start(&config, shared.clone()).await.unwrap();
    let flaky = Arc::new(FlakyStore {
        inner: shared.store.clone(),
        failures: 2,
        attempts: Default::default(),
        calls: AtomicU32::new(0),
        healed: Default::default(),
    });
    let indexer = sluice_worker::indexer_for(
        &config,
        shared.schemas.clone(),
        shared.embedder.clone(),
        flaky.clone(),
    )
    .unwrap();
    let worker =
        sluice_worker::Worker::new(config.kafka.clone(), config.worker.clone(), indexer).spawn();

    let channel = tonic::transport::Channel::from_shared(format!("http://{}", gateway.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut ingest = sluice_core::proto::ingest_service_client::IngestServiceClient::new(channel);
    let wait = |id: &str| {
        as_tenant(
            TENANT,
            IngestRequest {
                document: Some(document(id, "T", "Some text to index.")),
                wait: true,
                ..Default::default()
            },
        )
    };

    let doomed = ingest
        .ingest(wait("doomed"))
        .await
        .unwrap()
        .into_inner()
        .ingestion
        .unwrap();
    assert_eq!(state(&doomed), IngestionState::Failed);
    assert!(
        doomed.failure_reason.contains("gave up after 3 attempts"),
        "{}",
        doomed.failure_reason
    );
    assert!(
        doomed.failure_reason.contains("injected failure"),
        "{}",
        doomed.failure_reason
    );

    // Two failures, then success within the three attempts.
    let recovers = ingest
        .ingest(wait("recovers"))
        .await
        .unwrap()
        .into_inner()
        .ingestion
        .unwrap();
    assert_eq!(state(&recovers), IngestionState::Indexed, "{recovers:?}");
    assert_eq!(
        shared
            .store
            .count_document(TENANT, "recovers")
            .await
            .unwrap(),
        1
    );
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 6);

    // The dead letter carries where it came from and why.
    let dead = dead_letters(&config).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].get("sluice-document-id").map(String::as_str),
        Some("doomed")
    );
    assert_eq!(
        dead[0].get("sluice-dlq-origin-topic").map(String::as_str),
        Some("sluice.documents")
    );
    assert_eq!(
        dead[0].get("sluice-dlq-attempts").map(String::as_str),
        Some("3")
    );
    assert_eq!(
        dead[0].get("sluice-dlq-error-class").map(String::as_str),
        Some("transient")
    );

    // The cause is fixed; the operator re-drives the dead letter, exactly once.
    flaky.healed.store(true, Ordering::SeqCst);
    let options = |dry_run| sluice_admin::redrive::Options {
        max: 100,
        dry_run,
        timeout: Duration::from_secs(30),
    };
    let listed = sluice_admin::redrive::redrive(&config, &options(true))
        .await
        .unwrap();
    assert_eq!(listed.redriven.len(), 1, "{listed:?}");
    assert_eq!(listed.redriven[0].ingestion_id, None);
    let report = sluice_admin::redrive::redrive(&config, &options(false))
        .await
        .unwrap();
    assert_eq!(report.redriven.len(), 1, "{report:?}");
    let redriven = &report.redriven[0];
    assert_eq!(
        (
            redriven.document_id.as_str(),
            redriven.failed_ingestion_id.as_str()
        ),
        ("doomed", doomed.ingestion_id.as_str())
    );
    assert!(redriven.error.contains("injected failure"), "{redriven:?}");
    let new_id = redriven.ingestion_id.clone().unwrap();
    let ended = sluice_tests::ended(&ingest, TENANT, &new_id, Duration::from_secs(60)).await;
    assert_eq!(state(&ended), IngestionState::Indexed, "{ended:?}");
    assert_eq!(
        shared.store.count_document(TENANT, "doomed").await.unwrap(),
        1
    );
    // Done once: another run finds nothing left to re-drive.
    let again = sluice_admin::redrive::redrive(&config, &options(false))
        .await
        .unwrap();
    assert!(again.redriven.is_empty(), "{again:?}");

    gateway.shutdown().await;
    worker.shutdown().await;
}

/// Headers of every committed record in the dead-letter topic.
async fn dead_letters(config: &sluice_core::config::Config) -> Vec<HashMap<String, String>> {
    use rdkafka::message::Headers;
    use rdkafka::Message;
    sluice_tests::read_topic(&config.kafka, &config.kafka.dead_letter_topic)
        .await
        .iter()
        .map(|message| {
            message
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default()
        })
        .collect()
}
