//! A vector store outage mid-ingest pauses the worker instead of failing documents: none
//! FAILED, no dead letters, every document INDEXED once the store is back, and the worker's
//! health says it is paused and why while it waits.
//!
//! The outage is the embedded store behind a switch ([`Switched`]): no Qdrant server runs
//! here. `qdrant_server::an_outage_of_the_server_pauses_the_worker` does the same against a
//! real server (SLUICE_TEST_QDRANT_URL) by cutting a proxy in front of it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::json;
use sluice_client::{Document, IngestionState};
use sluice_core::record::DocumentRecord;
use sluice_core::vector::{IndexedDocument, VectorHit, VectorQuery, VectorStore, VectorStoreError};
use sluice_tests::{read_topic, Database, Stack};

/// A store that answers "unavailable" while switched off, as a server that is down does.
struct Switched {
    store: Arc<dyn VectorStore>,
    down: AtomicBool,
}

impl Switched {
    fn check(&self) -> Result<(), VectorStoreError> {
        if self.down.load(Ordering::SeqCst) {
            Err(VectorStoreError::unavailable(
                "connection refused (the test's outage)",
            ))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl VectorStore for Switched {
    fn kind(&self) -> &'static str {
        self.store.kind()
    }
    async fn index_documents(
        &self,
        documents: Vec<IndexedDocument>,
    ) -> Result<(), VectorStoreError> {
        self.check()?;
        self.store.index_documents(documents).await
    }
    async fn delete_document(
        &self,
        tenant: &str,
        document_id: &str,
    ) -> Result<u64, VectorStoreError> {
        self.check()?;
        self.store.delete_document(tenant, document_id).await
    }
    async fn search(&self, query: VectorQuery) -> Result<Vec<VectorHit>, VectorStoreError> {
        self.check()?;
        self.store.search(query).await
    }
    async fn count_document(
        &self,
        tenant: &str,
        document_id: &str,
    ) -> Result<u64, VectorStoreError> {
        self.check()?;
        self.store.count_document(tenant, document_id).await
    }
    async fn health(&self) -> Result<(), VectorStoreError> {
        self.check()?;
        self.store.health().await
    }
}

const TENANT: &str = "weather";
const DOCUMENTS: usize = 200;
const OUTAGE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_outage_mid_ingest_pauses_the_worker_and_fails_nothing() {
    let mut stack = Stack::start(Database::Sqlite).await;
    stack.generous_tenant(TENANT).await;
    // The stack's worker steps aside for one whose store can be switched off.
    stack.standalone_mut().stop_worker().await;
    let shared = stack.standalone().shared.clone();
    let store = Arc::new(Switched {
        store: shared.store.clone(),
        down: AtomicBool::new(false),
    });
    let indexer = sluice_worker::indexer_for(
        &stack.config,
        shared.schemas.clone(),
        shared.embedder.clone(),
        store.clone(),
    )
    .unwrap();
    let worker = sluice_worker::Worker::new(
        stack.config.kafka.clone(),
        stack.config.worker.clone(),
        indexer,
    );
    let pause = worker.pause();
    let worker = worker.spawn();

    let sluice = stack.client(TENANT);
    let mut ids = Vec::new();
    for batch in 0..(DOCUMENTS / 50) {
        let documents = (0..50).map(|i| {
            let n = batch * 50 + i;
            let text =
                format!("Weather report {n}: wind from the west, rain by evening, harbour {n}.");
            Document::new(
                format!("report-{n}"),
                json!({"title": "Report", "text": text, "source": "tests"}),
            )
        });
        let accepted = sluice.ingest_many(documents).await.expect("accepted");
        ids.extend(accepted.into_iter().map(|i| i.ingestion_id));
        if batch == 0 {
            // Some indexing under way, then the store goes down.
            tokio::time::sleep(Duration::from_millis(500)).await;
            store.down.store(true, Ordering::SeqCst);
        }
    }
    let down_at = Instant::now();
    // While it is down, the worker says it is paused, and why.
    let mut paused_seen = None;
    while down_at.elapsed() < OUTAGE {
        if paused_seen.is_none() {
            paused_seen = pause.reason();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (reason, _) = paused_seen.expect("the worker never reported itself paused");
    println!("paused during the outage: {reason}");
    assert!(reason.contains("vector store unavailable"), "{reason}");
    store.down.store(false, Ordering::SeqCst);
    let up_at = Instant::now();

    let ended = sluice
        .wait_for(ids.iter().cloned(), Some(Duration::from_secs(300)))
        .await
        .expect("every ingestion ended");
    let failed: Vec<_> = ended
        .iter()
        .filter(|i| i.state != IngestionState::Indexed)
        .map(|i| (&i.ingestion_id, &i.failure_reason))
        .collect();
    assert!(
        failed.is_empty(),
        "not INDEXED after the outage: {failed:?}"
    );
    assert!(
        pause.reason().is_none(),
        "still paused after the store came back"
    );
    println!(
        "{DOCUMENTS} documents, the store down for {} s mid-ingest: all INDEXED, the last {:.1} s after it came back",
        OUTAGE.as_secs(),
        up_at.elapsed().as_secs_f64()
    );
    let dead: Vec<_> = read_topic(&stack.config.kafka, &stack.config.kafka.dead_letter_topic)
        .await
        .into_iter()
        .filter(|m| DocumentRecord::from_message(m).is_ok_and(|r| r.tenant.as_str() == TENANT))
        .collect();
    assert!(
        dead.is_empty(),
        "{} dead letters from the outage",
        dead.len()
    );
    for n in [0, DOCUMENTS / 2, DOCUMENTS - 1] {
        let points = shared
            .store
            .count_document(TENANT, &format!("report-{n}"))
            .await
            .unwrap();
        assert_eq!(points, 1, "report-{n} has {points} points");
    }
    worker.shutdown().await;
    // The store is flushed when its last handle goes, which must be before the stack removes
    // its directory.
    drop((store, shared));
    stack.shutdown().await;
}
