//! Tenants over mTLS are isolated: for every RPC, tenant A can neither read, change, delete,
//! watch, search nor infer anything of tenant B, not with B's ingestion ids and not with
//! guessed ones; the same document id in two tenants is two documents. On SQLite and
//! PostgreSQL.

use std::time::Duration;

use sluice_core::proto::ingest_service_client::IngestServiceClient;
use sluice_core::proto::search_service_client::SearchServiceClient;
use sluice_core::proto::{
    DeleteDocumentRequest, GetIngestionRequest, IngestBatchRequest, IngestRequest, Ingestion,
    IngestionState, SearchHit, SearchRequest, WatchIngestionsRequest,
};
use sluice_tests::{document, state, Database, Stack};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

struct Tenant {
    ingest: IngestServiceClient<Channel>,
    search: SearchServiceClient<Channel>,
}

impl Tenant {
    async fn connect(stack: &Stack, id: &str) -> Tenant {
        let channel = stack.client_channel(id).await;
        Tenant {
            ingest: IngestServiceClient::new(channel.clone()),
            search: SearchServiceClient::new(channel),
        }
    }

    async fn ingest_and_wait(&mut self, id: &str, text: &str, key: &str) -> Ingestion {
        let ingestion = self
            .ingest
            .ingest(IngestRequest {
                document: Some(document(id, id, text)),
                idempotency_key: key.into(),
                wait: true,
            })
            .await
            .expect("ingest")
            .into_inner()
            .ingestion
            .unwrap();
        assert_eq!(state(&ingestion), IngestionState::Indexed, "{ingestion:?}");
        ingestion
    }

    async fn search(&mut self, query: &str) -> Vec<SearchHit> {
        self.search
            .search(SearchRequest {
                query: query.into(),
                top_k: 10,
                ..Default::default()
            })
            .await
            .expect("search")
            .into_inner()
            .hits
    }

    async fn get(&mut self, ingestion_id: &str) -> Result<Ingestion, tonic::Status> {
        self.ingest
            .get_ingestion(GetIngestionRequest {
                ingestion_id: ingestion_id.into(),
            })
            .await
            .map(|r| r.into_inner())
    }
}

const ACME_TEXT: &str = "Acme's confidential plan: the glacier survey starts in March, mapping \
    moraines and meltwater channels across the northern valley.";
const GLOBEX_TEXT: &str = "Globex's recipe notes: sourdough starter fed twice daily with rye \
    flour, baked at 250 degrees in a cast iron pot.";

async fn tenants_are_isolated(database: Database) {
    let stack = Stack::start_tls(database, &["acme", "globex"]).await;
    let mut acme = Tenant::connect(&stack, "acme").await;
    let mut globex = Tenant::connect(&stack, "globex").await;

    // Globex watches everything it may see while acme works.
    let mut globex_watch = globex
        .ingest
        .watch_ingestions(WatchIngestionsRequest::default())
        .await
        .unwrap()
        .into_inner();

    // The same document id and the same idempotency key in both tenants: two documents.
    let acme_ingestion = acme.ingest_and_wait("report", ACME_TEXT, "key-1").await;
    let globex_ingestion = globex.ingest_and_wait("report", GLOBEX_TEXT, "key-1").await;
    assert_ne!(acme_ingestion.ingestion_id, globex_ingestion.ingestion_id);
    let acme_only = acme
        .ingest_and_wait("acme-only", "Acme's payroll runs on the last Friday.", "")
        .await;

    // GetIngestion: acme's id is exactly as unknown to globex as an id nobody issued.
    let theirs = globex.get(&acme_ingestion.ingestion_id).await.unwrap_err();
    let guessed = globex
        .get("01890000-0000-7000-8000-000000000000")
        .await
        .unwrap_err();
    assert_eq!(theirs.code(), Code::NotFound);
    assert_eq!(guessed.code(), Code::NotFound);
    assert_eq!(
        theirs.message().replace(&acme_ingestion.ingestion_id, "ID"),
        guessed
            .message()
            .replace("01890000-0000-7000-8000-000000000000", "ID"),
        "the refusal must not tell whether the id exists elsewhere"
    );
    assert_eq!(
        globex
            .get(&globex_ingestion.ingestion_id)
            .await
            .unwrap()
            .document_id,
        "report"
    );

    // WatchIngestions for acme's ids: unknown to globex, like a guessed one.
    let watch_theirs = globex
        .ingest
        .watch_ingestions(WatchIngestionsRequest {
            ingestion_ids: vec![acme_ingestion.ingestion_id.clone()],
            ..Default::default()
        })
        .await
        .expect_err("another tenant's ingestion cannot be watched");
    assert_eq!(watch_theirs.code(), Code::NotFound);

    // Globex's open watch saw its own ingestion's events, never acme's.
    let seen = collect_for(&mut globex_watch, Duration::from_secs(2)).await;
    assert!(
        seen.iter()
            .any(|i| i.ingestion_id == globex_ingestion.ingestion_id),
        "globex sees its own events: {seen:?}"
    );
    for ingestion in &seen {
        assert_eq!(
            ingestion.ingestion_id, globex_ingestion.ingestion_id,
            "globex saw another tenant's event"
        );
    }

    // Resuming from the very beginning replays only globex's own log; a cursor names a place in
    // the caller's log, so none reaches into acme's.
    let mut replay = globex
        .ingest
        .watch_ingestions(WatchIngestionsRequest {
            after_cursor: "0".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let replayed = collect_for(&mut replay, Duration::from_secs(2)).await;
    assert!(!replayed.is_empty(), "globex's own events replay");
    assert!(
        replayed
            .iter()
            .all(|i| i.ingestion_id == globex_ingestion.ingestion_id),
        "globex's replay holds another tenant's event: {replayed:?}"
    );

    // Search: each tenant finds only its own text under the shared document id.
    let globex_hits = globex.search("glacier survey moraines meltwater").await;
    assert!(
        globex_hits.iter().all(|h| !h.text.contains("Acme")),
        "{globex_hits:?}"
    );
    assert_eq!(
        globex_hits.len(),
        1,
        "only globex's one chunk: {globex_hits:?}"
    );
    let acme_hits = acme.search("sourdough starter rye flour").await;
    assert!(
        acme_hits.iter().all(|h| !h.text.contains("Globex")),
        "{acme_hits:?}"
    );
    assert_eq!(acme_hits.len(), 2, "acme's two documents: {acme_hits:?}");

    // DeleteDocument and IngestBatch act inside the caller's tenant only: globex deleting
    // "acme-only" and re-ingesting "report" leave acme's documents as they were.
    let deletion = globex
        .ingest
        .delete_document(DeleteDocumentRequest {
            document_id: "acme-only".into(),
            wait: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .ingestion
        .unwrap();
    assert_ne!(state(&deletion), IngestionState::Accepted);
    globex
        .ingest
        .ingest_batch(IngestBatchRequest {
            documents: vec![document(
                "report",
                "report",
                "Globex replaced its own report.",
            )],
            ..Default::default()
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let acme_hits = acme.search("payroll Friday").await;
    assert!(
        acme_hits.iter().any(|h| h.document_id == "acme-only"),
        "acme-only survived globex's delete: {acme_hits:?}"
    );
    assert!(
        acme_hits.iter().any(|h| h.text == ACME_TEXT),
        "acme's report survived globex's re-ingest: {acme_hits:?}"
    );
    assert_eq!(
        acme.get(&acme_only.ingestion_id).await.unwrap().state,
        IngestionState::Indexed as i32
    );

    stack.shutdown().await;
}

/// The ingestions of events arriving on `stream` within `window`.
async fn collect_for(
    stream: &mut tonic::Streaming<sluice_core::proto::IngestionEvent>,
    window: Duration,
) -> Vec<Ingestion> {
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(window, async {
        while let Some(Ok(event)) = stream.next().await {
            seen.extend(event.ingestion);
        }
    })
    .await;
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_isolated_on_sqlite() {
    tenants_are_isolated(Database::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_isolated_on_postgres() {
    tenants_are_isolated(Database::Postgres).await;
}
