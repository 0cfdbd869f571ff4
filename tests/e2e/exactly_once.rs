//! What users trust Sluice for: a repeated request writes nothing new, and a watch stream
//! resumed from its last cursor misses nothing and repeats nothing, across gateway restarts.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::Message;
use sluice_core::proto::ingest_service_client::IngestServiceClient;
use sluice_core::proto::{
    DeleteDocumentRequest, IngestBatchRequest, IngestRequest, IngestionEvent, IngestionState,
    WatchIngestionsRequest,
};
use sluice_tests::{as_tenant, bad_request_fields, document, read_topic, state, Database, Stack};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

const TENANT: &str = "acme";

fn ingest_request(id: &str, text: &str, key: &str) -> tonic::Request<IngestRequest> {
    as_tenant(
        TENANT,
        IngestRequest {
            document: Some(document(id, "Title", text)),
            idempotency_key: key.into(),
            ..Default::default()
        },
    )
}

/// How many records of each document the documents topic holds.
async fn records_per_document(stack: &Stack) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for message in read_topic(&stack.config.kafka, &stack.config.kafka.documents_topic).await {
        let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
        let document = key
            .split_once('/')
            .map(|(_, d)| d.to_owned())
            .unwrap_or(key);
        *counts.entry(document).or_default() += 1;
    }
    counts
}

/// The ingestion ids an IngestBatch call answers with.
async fn batch_ids(
    client: &mut IngestServiceClient<Channel>,
    request: tonic::Request<IngestBatchRequest>,
) -> Vec<String> {
    client
        .ingest_batch(request)
        .await
        .unwrap()
        .into_inner()
        .ingestions
        .into_iter()
        .map(|i| i.ingestion_id)
        .collect()
}

async fn repeated_requests_write_once(database: Database) {
    let stack = Stack::start(database).await;
    let mut ingest = stack.ingest_client().await;
    let id = |r: tonic::Response<sluice_core::proto::IngestResponse>| {
        r.into_inner().ingestion.unwrap().ingestion_id
    };

    // Same idempotency key: the first ingestion, even when the retry's body differs.
    let keyed = id(ingest
        .ingest(ingest_request("keyed", "First text.", "k-1"))
        .await
        .unwrap());
    let again = id(ingest
        .ingest(ingest_request("keyed", "Other text.", "k-1"))
        .await
        .unwrap());
    assert_eq!(keyed, again);

    // No key: the same document with the same content is a repeat; changed content is not.
    let plain = id(ingest
        .ingest(ingest_request("plain", "Same words.", ""))
        .await
        .unwrap());
    let repeat = id(ingest
        .ingest(ingest_request("plain", "Same words.", ""))
        .await
        .unwrap());
    assert_eq!(plain, repeat);
    let edited = id(ingest
        .ingest(ingest_request("plain", "New words.", ""))
        .await
        .unwrap());
    assert_ne!(plain, edited);
    // Going back to the first content is a change of its own, not a repeat of the first.
    let reverted = id(ingest
        .ingest(ingest_request("plain", "Same words.", ""))
        .await
        .unwrap());
    assert_ne!(reverted, plain);
    // After a deletion, the same content again is written again.
    ingest
        .delete_document(as_tenant(
            TENANT,
            DeleteDocumentRequest {
                document_id: "plain".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let after_delete = id(ingest
        .ingest(ingest_request("plain", "Same words.", ""))
        .await
        .unwrap());
    assert_ne!(after_delete, reverted);

    // A batch with a key, repeated: the same ingestions.
    let batch = || {
        as_tenant(
            TENANT,
            IngestBatchRequest {
                documents: vec![
                    document("batch-a", "A", "Alpha."),
                    document("batch-b", "B", "Beta."),
                ],
                idempotency_key: "batch-1".into(),
            },
        )
    };
    let first = batch_ids(&mut ingest, batch()).await;
    let second = batch_ids(&mut ingest, batch()).await;
    assert_eq!(first, second);

    // Long after (every claim older than its lease, as a gateway that died mid-write would
    // leave one), retries still find the first ingestions, however often they come.
    let db = sluice_core::db::connect(&stack.config.database_url())
        .await
        .unwrap();
    use sea_orm::ConnectionTrait;
    db.execute_unprepared("UPDATE idempotency_claims SET claimed_at_ms = claimed_at_ms - 600000")
        .await
        .unwrap();
    for _ in 0..3 {
        let late = id(ingest
            .ingest(ingest_request("keyed", "Third text.", "k-1"))
            .await
            .unwrap());
        assert_eq!(late, keyed, "a late retry of k-1 wrote again");
        let late_batch = batch_ids(&mut ingest, batch()).await;
        assert_eq!(late_batch, first, "a late retry of batch-1 wrote again");
    }

    // Eight copies of one request at once: one ingestion.
    let copies = (0..8).map(|_| {
        let mut client = ingest.clone();
        async move {
            id(client
                .ingest(ingest_request("racing", "Concurrent copies.", ""))
                .await
                .unwrap())
        }
    });
    let ids = futures::future::join_all(copies).await;
    assert!(ids.iter().all(|i| i == &ids[0]), "{ids:?}");

    // What reached Kafka: one record per distinct request.
    let records = records_per_document(&stack).await;
    assert_eq!(records.get("keyed"), Some(&1), "{records:?}");
    // plain: first, edited, reverted, delete, after-delete.
    assert_eq!(records.get("plain"), Some(&5), "{records:?}");
    assert_eq!(records.get("batch-a"), Some(&1), "{records:?}");
    assert_eq!(records.get("racing"), Some(&1), "{records:?}");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_requests_write_once_on_sqlite() {
    repeated_requests_write_once(Database::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_requests_write_once_on_postgres() {
    repeated_requests_write_once(Database::Postgres).await;
}

/// Reads `n` events, then makes sure no further event arrives for a while.
async fn exactly(stream: &mut Streaming<IngestionEvent>, n: usize) -> Vec<IngestionEvent> {
    let mut events = Vec::with_capacity(n);
    while events.len() < n {
        let event = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} events arrived", events.len()))
            .expect("stream open")
            .expect("event");
        events.push(event);
    }
    let extra = tokio::time::timeout(Duration::from_millis(1500), stream.next()).await;
    assert!(
        extra.is_err(),
        "an event beyond the {n} expected: {extra:?}"
    );
    events
}

fn summary(events: &[IngestionEvent]) -> Vec<(String, IngestionState)> {
    events
        .iter()
        .map(|e| {
            let ingestion = e.ingestion.as_ref().unwrap();
            (ingestion.document_id.clone(), state(ingestion))
        })
        .collect()
}

async fn watch_from(
    stack: &Stack,
    cursor: &str,
    ids: Vec<String>,
) -> Result<Streaming<IngestionEvent>, tonic::Status> {
    stack
        .ingest_client()
        .await
        .watch_ingestions(as_tenant(
            TENANT,
            WatchIngestionsRequest {
                ingestion_ids: ids,
                after_cursor: cursor.into(),
            },
        ))
        .await
        .map(|r| r.into_inner())
}

async fn ingest_and_wait(stack: &Stack, ids: &[&str]) -> Vec<String> {
    let mut ingest = stack.ingest_client().await;
    let mut ingestions = Vec::new();
    for id in ids {
        let response = ingest
            .ingest(as_tenant(
                TENANT,
                IngestRequest {
                    document: Some(document(id, "T", &format!("The text of {id}."))),
                    wait: true,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .ingestion
            .unwrap();
        assert_eq!(state(&response), IngestionState::Indexed);
        ingestions.push(response.ingestion_id);
    }
    ingestions
}

async fn watch_resumes_from_a_cursor(database: Database) {
    use IngestionState::{Accepted, Indexed};
    let mut stack = Stack::start(database).await;
    let mut live = watch_from(&stack, "", vec![]).await.unwrap();
    let first_ids = ingest_and_wait(&stack, &["one", "two", "three"]).await;
    let events = exactly(&mut live, 6).await;
    let expected: Vec<(String, IngestionState)> = ["one", "two", "three"]
        .iter()
        .flat_map(|d| [(d.to_string(), Accepted), (d.to_string(), Indexed)])
        .collect();
    assert_eq!(summary(&events), expected);
    let cursors: Vec<i64> = events.iter().map(|e| e.cursor.parse().unwrap()).collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "{cursors:?}");

    // A client that saw two events reconnects: the other four, once each.
    let mut resumed = watch_from(&stack, &events[1].cursor, vec![]).await.unwrap();
    assert_eq!(summary(&exactly(&mut resumed, 4).await), expected[2..]);

    // Only one ingestion, from the start: its end (ACCEPTED came before the cursor), then the
    // stream ends by itself.
    let mut one = watch_from(&stack, &events[0].cursor, vec![first_ids[0].clone()])
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(event) = one.next().await {
        got.push(event.unwrap());
    }
    assert_eq!(summary(&got), [("one".to_string(), Indexed)]);

    // The gateway restarts; events happen while nobody watches; the last cursor resumes.
    let last = events.last().unwrap().cursor.clone();
    drop(live);
    drop(resumed);
    stack.restart().await;
    ingest_and_wait(&stack, &["four", "five"]).await;
    let mut after_restart = watch_from(&stack, &last, vec![]).await.unwrap();
    assert_eq!(
        summary(&exactly(&mut after_restart, 4).await),
        [
            ("four".to_string(), Accepted),
            ("four".to_string(), Indexed),
            ("five".to_string(), Accepted),
            ("five".to_string(), Indexed),
        ]
    );

    // Cursors this gateway never handed out.
    for bad in ["yesterday", "-4"] {
        let status = watch_from(&stack, bad, vec![]).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(bad_request_fields(&status), ["after_cursor"]);
    }
    let future = watch_from(&stack, "99999999", vec![]).await.unwrap_err();
    assert_eq!(future.code(), Code::InvalidArgument, "{future:?}");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_from_a_cursor_on_sqlite() {
    watch_resumes_from_a_cursor(Database::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_from_a_cursor_on_postgres() {
    watch_resumes_from_a_cursor(Database::Postgres).await;
}

/// A client that gives up on an Ingest at any moment (here: after 20% to 110% of a call's
/// usual time, while its transaction is in flight) and then retries with the same idempotency key
/// gets one record per key: the gateway records the key even when the call it came with was
/// dropped after the Kafka commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_ingest_still_records_its_key() {
    let stack = Stack::start(Database::Sqlite).await;
    let ingest = stack.ingest_client().await;
    const CALLS: u64 = 40;
    // How long a call takes here and now (machines and loads differ): the patience below is
    // spread around it, so that many calls are given up on while their transaction runs.
    let mut took = Vec::new();
    for i in 0..5 {
        let started = std::time::Instant::now();
        ingest
            .clone()
            .ingest(ingest_request(
                &format!("warm-{i}"),
                "Warm.",
                &format!("w{i}"),
            ))
            .await
            .unwrap();
        took.push(started.elapsed());
    }
    took.sort();
    let typical = took[2];
    let mut gave_up = 0;
    for i in 0..CALLS {
        let mut client = ingest.clone();
        let patience = typical.mul_f64(0.2 + 0.1 * (i % 10) as f64);
        let call = client.ingest(ingest_request(
            &format!("c{i}"),
            "Given up on.",
            &format!("k{i}"),
        ));
        if tokio::time::timeout(patience, call).await.is_err() {
            gave_up += 1;
        }
    }
    // Some of those gave up after their records were committed: the case that matters.
    let written_before_retries = records_per_document(&stack).await.len();
    // Every retry with the same key answers, and none writes again.
    let mut ids = Vec::new();
    for i in 0..CALLS {
        let mut client = ingest.clone();
        let ingestion = client
            .ingest(ingest_request(
                &format!("c{i}"),
                "Given up on.",
                &format!("k{i}"),
            ))
            .await
            .expect("the retry")
            .into_inner()
            .ingestion
            .unwrap();
        ids.push(ingestion.ingestion_id);
        // A third try returns the same ingestion.
        let again = client
            .ingest(ingest_request(
                &format!("c{i}"),
                "Given up on.",
                &format!("k{i}"),
            ))
            .await
            .unwrap()
            .into_inner()
            .ingestion
            .unwrap();
        assert_eq!(again.ingestion_id, ids[i as usize], "c{i}");
    }
    let counts = records_per_document(&stack).await;
    println!(
        "{gave_up} of {CALLS} calls given up on; {written_before_retries} documents were in Kafka \
         before the retries ({} of them from calls given up on)",
        written_before_retries as u64 - 5 - (CALLS - gave_up)
    );
    assert!(gave_up >= 5, "only {gave_up} calls were given up on");
    for i in 0..CALLS {
        assert_eq!(counts.get(&format!("c{i}")), Some(&1), "c{i}: {counts:?}");
    }
    stack.shutdown().await;
}
