//! The whole path on real parts: Ingest → Kafka transaction → worker → qdrant-edge →
//! completion stream → Search, on SQLite and on PostgreSQL.

use std::collections::HashMap;
use std::time::Duration;

use sluice_core::proto::{
    DeleteDocumentRequest, GetIngestionRequest, IngestBatchRequest, IngestRequest, IngestionState,
    SearchRequest, WatchIngestionsRequest,
};
use sluice_tests::{as_tenant, bad_request_fields, document, state, Database, Stack};
use tokio_stream::StreamExt;

const TENANT: &str = "acme";

/// Three documents on different subjects; each query finds its own document first, and the
/// watch stream reports ACCEPTED then INDEXED for each.
async fn ingest_watch_search(database: Database) {
    let stack = Stack::start(database).await;
    let mut ingest = stack.ingest_client().await;
    let mut search = stack.search_client().await;

    let mut watch = ingest
        .watch_ingestions(as_tenant(TENANT, WatchIngestionsRequest::default()))
        .await
        .unwrap()
        .into_inner();

    let docs = [
        ("volcano", "Volcanoes", "A volcano is a rupture in the crust of a planet where lava, volcanic ash and gases escape from a magma chamber below the surface. Eruptions can be explosive or effusive."),
        ("sourdough", "Sourdough bread", "Sourdough bread is made by fermenting dough with wild yeast and lactobacilli. The starter is fed with flour and water, and the loaf is baked in a hot oven until the crust is crisp."),
        ("chess", "Chess openings", "In chess, the Sicilian Defence answers the king's pawn opening with c5. Players study openings, the middlegame and endgame technique to win games against strong opponents."),
    ];
    let mut ids = HashMap::new();
    for (id, title, text) in docs {
        let response = ingest
            .ingest(as_tenant(
                TENANT,
                IngestRequest {
                    document: Some(document(id, title, text)),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let ingestion = response.ingestion.unwrap();
        assert_eq!(state(&ingestion), IngestionState::Accepted);
        // Kafka offsets count other tenants' records too: never shown to a tenant.
        #[allow(deprecated)]
        let position = &ingestion.position;
        assert_eq!(position, &None);
        ids.insert(ingestion.ingestion_id.clone(), id);
    }

    // Every ingestion is ACCEPTED, then INDEXED with its chunk count, each exactly once.
    let mut seen: HashMap<String, Vec<IngestionState>> = HashMap::new();
    let indexed = |seen: &HashMap<String, Vec<IngestionState>>| {
        seen.values()
            .filter(|s| s.contains(&IngestionState::Indexed))
            .count()
    };
    tokio::time::timeout(Duration::from_secs(120), async {
        while indexed(&seen) < 3 {
            let event = watch.next().await.expect("stream open").expect("event");
            let ingestion = event.ingestion.unwrap();
            assert!(
                ids.contains_key(&ingestion.ingestion_id),
                "event for an unknown ingestion"
            );
            if state(&ingestion) == IngestionState::Indexed {
                assert!(ingestion.chunk_count >= 1);
            }
            let current = state(&ingestion);
            seen.entry(ingestion.ingestion_id)
                .or_default()
                .push(current);
        }
    })
    .await
    .expect("all three indexed within 120 s");
    for states in seen.values() {
        assert_eq!(states, &[IngestionState::Accepted, IngestionState::Indexed]);
    }

    for (query, expected) in [
        ("lava and magma erupting from a mountain", "volcano"),
        ("baking bread with a fermented starter", "sourdough"),
        ("which opening should I play against e4", "chess"),
    ] {
        let hits = search
            .search(as_tenant(
                TENANT,
                SearchRequest {
                    query: query.into(),
                    top_k: 3,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .hits;
        assert_eq!(hits.len(), 3, "three documents, one chunk each");
        assert_eq!(
            hits[0].document_id, expected,
            "query {query:?} found {hits:?}"
        );
        assert!(hits[0].score > hits[1].score);
        assert_eq!(
            hits[0].attributes.get("source").map(String::as_str),
            Some("tests")
        );
    }

    // Another tenant sees none of it.
    let other = search
        .search(as_tenant(
            "other",
            SearchRequest {
                query: "volcano".into(),
                top_k: 3,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert!(other.is_empty());
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_watch_search_on_sqlite() {
    ingest_watch_search(Database::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_watch_search_on_postgres() {
    ingest_watch_search(Database::Postgres).await;
}

/// `wait = true` returns the final state; GetIngestion agrees; re-ingesting replaces chunks;
/// deleting removes them.
async fn lifecycle(database: Database) {
    let stack = Stack::start(database).await;
    let mut ingest = stack.ingest_client().await;
    let store = stack.standalone().shared.store.clone();

    // Long enough for several chunks of 250 tokens.
    let long_text = (0..40)
        .map(|i| format!("Paragraph {i} explains how rivers carve valleys, carry sediment to the sea and flood their plains in spring. "))
        .collect::<String>()
        .repeat(3);
    let first = ingest
        .ingest(as_tenant(
            TENANT,
            IngestRequest {
                document: Some(document("river", "Rivers", &long_text)),
                wait: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .ingestion
        .unwrap();
    assert_eq!(state(&first), IngestionState::Indexed, "{first:?}");
    assert!(first.chunk_count >= 3, "{} chunks", first.chunk_count);
    assert_eq!(
        store.count_document(TENANT, "river").await.unwrap(),
        first.chunk_count as u64
    );

    let fetched = ingest
        .get_ingestion(as_tenant(
            TENANT,
            GetIngestionRequest {
                ingestion_id: first.ingestion_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched, first);
    // Another tenant cannot read it, even knowing the id.
    let hidden = ingest
        .get_ingestion(as_tenant(
            "other",
            GetIngestionRequest {
                ingestion_id: first.ingestion_id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), tonic::Code::NotFound);

    // Re-ingest with one chunk: the stale chunks go.
    let second = ingest
        .ingest(as_tenant(
            TENANT,
            IngestRequest {
                document: Some(document("river", "Rivers", "Rivers flow to the sea.")),
                wait: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .ingestion
        .unwrap();
    assert_eq!(
        (state(&second), second.chunk_count),
        (IngestionState::Indexed, 1)
    );
    assert_eq!(store.count_document(TENANT, "river").await.unwrap(), 1);

    let deleted = ingest
        .delete_document(as_tenant(
            TENANT,
            DeleteDocumentRequest {
                document_id: "river".into(),
                wait: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .ingestion
        .unwrap();
    assert_eq!(state(&deleted), IngestionState::Deleted);
    assert_eq!(deleted.chunk_count, 1, "it removed the one chunk");
    assert_eq!(store.count_document(TENANT, "river").await.unwrap(), 0);
    // The store must close before the stack deletes its directory.
    drop(store);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_on_sqlite() {
    lifecycle(Database::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_on_postgres() {
    lifecycle(Database::Postgres).await;
}

/// One invalid document rejects the whole batch: nothing of it reaches Kafka or the index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_one_invalid_document_is_rejected_whole() {
    let stack = Stack::start(Database::Sqlite).await;
    let mut ingest = stack.ingest_client().await;
    let mut bad = document("b", "B", "x");
    bad.payload = Some(sluice_core::proto::document::Payload::AvroJson(
        r#"{"text": "ok", "tags": ["a", 2]}"#.into(),
    ));
    let status = ingest
        .ingest_batch(as_tenant(
            TENANT,
            IngestBatchRequest {
                documents: vec![
                    document("a", "A", "first"),
                    bad,
                    document("c", "C", "third"),
                ],
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        bad_request_fields(&status),
        ["documents[1].avro_json.tags[1]"]
    );

    // A valid batch afterwards goes through whole, in one transaction.
    let batch = ingest
        .ingest_batch(as_tenant(
            TENANT,
            IngestBatchRequest {
                documents: vec![document("d", "D", "fourth"), document("e", "E", "fifth")],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .ingestions;
    assert_eq!(
        batch
            .iter()
            .map(|i| i.document_id.as_str())
            .collect::<Vec<_>>(),
        ["d", "e"]
    );
    let store = stack.standalone().shared.store.clone();
    sluice_tests::eventually("the valid batch indexed", Duration::from_secs(60), || {
        let store = store.clone();
        async move {
            (store.count_document(TENANT, "d").await.unwrap() == 1
                && store.count_document(TENANT, "e").await.unwrap() == 1)
                .then_some(())
        }
    })
    .await;
    // The documents topic holds exactly the two accepted records: the rejected batch wrote nothing.
    assert_eq!(documents_in_topic(&stack).await, 2);
    for id in ["a", "b", "c"] {
        assert_eq!(
            store.count_document(TENANT, id).await.unwrap(),
            0,
            "{id} must not be indexed"
        );
    }
    // The store must close before the stack deletes its directory.
    drop(store);
    stack.shutdown().await;
}

/// Committed records in the documents topic.
async fn documents_in_topic(stack: &Stack) -> usize {
    sluice_tests::read_topic(&stack.config.kafka, &stack.config.kafka.documents_topic)
        .await
        .len()
}

/// Each kind of bad input is INVALID_ARGUMENT naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_names_the_field() {
    let stack = Stack::start(Database::Sqlite).await;
    let mut ingest = stack.ingest_client().await;
    let cases: Vec<(sluice_core::proto::Document, &str)> = vec![
        (document("d", "T", ""), "document.avro_json.text"),
        (
            document("d", "T", &"x".repeat(2 << 20)),
            "document.avro_json.text",
        ),
        (
            sluice_core::proto::Document {
                document_id: "d".into(),
                payload: Some(sluice_core::proto::document::Payload::AvroJson(
                    r#"{"headline": "no text field"}"#.into(),
                )),
                ..Default::default()
            },
            "document.avro_json.text",
        ),
        (
            sluice_core::proto::Document {
                document_id: "d".into(),
                payload: Some(sluice_core::proto::document::Payload::AvroBinary(vec![
                    0xff, 0x01,
                ])),
                ..Default::default()
            },
            "document.avro_binary",
        ),
        (
            {
                let mut d = document("d", "T", "fine");
                d.attributes.insert("bad key!".into(), "v".into());
                d
            },
            "document.attributes[\"bad key!\"]",
        ),
        (document("", "T", "fine"), "document.document_id"),
    ];
    for (document, field) in cases {
        let status = ingest
            .ingest(as_tenant(
                TENANT,
                IngestRequest {
                    document: Some(document),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{field}: {status:?}"
        );
        assert!(
            bad_request_fields(&status).iter().any(|f| f == field),
            "{field} not in {:?}",
            bad_request_fields(&status)
        );
    }
    // Nothing was written for any of them.
    assert_eq!(documents_in_topic(&stack).await, 0);
    // No tenant, no service.
    let status = ingest
        .ingest(IngestRequest {
            document: Some(document("d", "T", "fine")),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    stack.shutdown().await;
}
