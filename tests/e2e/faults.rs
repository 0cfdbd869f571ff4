//! Crashes on purpose, on real parts: Sluice standalone (gateway, worker and the embedded
//! vector store in one process) is killed with SIGKILL twenty times while 2,000 documents
//! arrive in batches; afterwards every acknowledged document is indexed once and every
//! ingestion ended exactly once. Then a graceful SIGTERM: the process finishes and exits 0.
//!
//! The counts each run saw are printed (`cargo test --test e2e faults -- --nocapture`).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use sluice_core::proto::ingest_service_client::IngestServiceClient;
use sluice_core::proto::IngestBatchRequest;
use sluice_tests::{as_tenant, document, rate_retry_delay, read_topic, Broker, GatewayProcess};
use tonic::transport::Channel;
use tonic::Code;

const TENANT: &str = "acme";
const DOCUMENTS: usize = 2_000;
const BATCH: usize = 10;
const KILLS: usize = 20;

/// A tiny deterministic generator for the kill moments; the seed is printed so a failing run
/// can be replayed with SLUICE_FAULT_SEED.
struct Moments(u64);

impl Moments {
    fn from_env() -> Self {
        let seed = std::env::var("SLUICE_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        println!("fault seed: {seed}");
        Self(seed | 1)
    }

    /// Somewhere between `low` and `high`.
    fn between(&mut self, low: Duration, high: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        low + (high - low).mul_f64((self.0 % 10_000) as f64 / 10_000.0)
    }
}

/// Sends every batch until it is acknowledged, retrying with the same idempotency key.
/// Returns the acknowledged ingestion id of each document, and how many calls failed.
async fn send_all(
    client: IngestServiceClient<Channel>,
    batches: Vec<usize>,
) -> (HashMap<String, String>, usize) {
    let mut acknowledged = HashMap::new();
    let mut failures = 0;
    for batch in batches {
        let documents: Vec<_> = (batch * BATCH..(batch + 1) * BATCH)
            .map(|i| {
                document(
                    &format!("doc-{i}"),
                    "Fault",
                    &format!("Document number {i} survives crashes."),
                )
            })
            .collect();
        loop {
            let request = as_tenant(
                TENANT,
                IngestBatchRequest {
                    documents: documents.clone(),
                    idempotency_key: format!("batch-{batch}"),
                },
            );
            match client.clone().ingest_batch(request).await {
                Ok(response) => {
                    for ingestion in response.into_inner().ingestions {
                        acknowledged.insert(ingestion.document_id, ingestion.ingestion_id);
                    }
                    break;
                }
                Err(status) if rate_retry_delay(&status).is_some() => {
                    // Over the tenant's rate: wait as the gateway advises, like a client should.
                    tokio::time::sleep(rate_retry_delay(&status).unwrap()).await;
                }
                Err(status) => {
                    // A crash mid-call is never answered OK; it is one of these.
                    assert!(
                        matches!(
                            status.code(),
                            Code::Unavailable
                                | Code::Unknown
                                | Code::Cancelled
                                | Code::Internal
                                | Code::Aborted
                                | Code::DeadlineExceeded
                        ),
                        "unexpected refusal: {status:?}"
                    );
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    (acknowledged, failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_twenty_times_nothing_lost_nothing_twice() {
    let mut moments = Moments::from_env();
    let broker = Broker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut sluice = GatewayProcess::new(dir.path(), &broker);
    sluice.start();

    // Four clients, each with its share of the 200 batches.
    let batches = DOCUMENTS / BATCH;
    let senders: Vec<_> = (0..4)
        .map(|k| {
            let share: Vec<usize> = (0..batches).filter(|b| b % 4 == k).collect();
            tokio::spawn(send_all(sluice.client(), share))
        })
        .collect();

    let started = Instant::now();
    for _ in 0..KILLS {
        tokio::time::sleep(
            moments.between(Duration::from_millis(1500), Duration::from_millis(5000)),
        )
        .await;
        sluice.kill();
        sluice.start();
    }
    let mut acknowledged = HashMap::new();
    let mut failed_calls = 0;
    for sender in senders {
        let (acks, failures) = sender.await.unwrap();
        acknowledged.extend(acks);
        failed_calls += failures;
    }
    assert_eq!(acknowledged.len(), DOCUMENTS);
    println!(
        "{KILLS} kills in {:.0?}; {DOCUMENTS} documents acknowledged; {failed_calls} calls failed during crashes and were retried",
        started.elapsed()
    );

    // Every acknowledged ingestion ends.
    let database = sluice_core::db::connect(&format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("data/sluice.db").display()
    ))
    .await
    .unwrap();
    let ids: Vec<String> = acknowledged.values().cloned().collect();
    let rows = sluice_tests::ended_rows(&database, TENANT, &ids, Duration::from_secs(600)).await;
    assert!(
        rows.iter().all(|r| r.state == "indexed"),
        "some ingestion did not index"
    );
    println!(
        "all {} ingestions indexed after {:.0?}",
        ids.len(),
        started.elapsed()
    );

    // Exactly one terminal event per ingestion, in the log watch streams read.
    let events_per_ingestion = sluice_tests::terminal_events(&database).await;
    for id in &ids {
        assert_eq!(
            events_per_ingestion.get(id),
            Some(&1),
            "terminal events of {id}"
        );
    }
    // Ingestions nobody was told about: records of transactions cut by a crash, which this
    // broker shows to read_committed readers (Apache Kafka hides them).
    let acked: HashSet<&String> = ids.iter().collect();
    let unacknowledged = events_per_ingestion
        .keys()
        .filter(|id| !acked.contains(id))
        .count();
    let completions = read_topic(&broker_kafka(&broker), "sluice.completions")
        .await
        .len();
    println!(
        "terminal events: {} ingestions, each exactly once; {completions} completion records in Kafka; {unacknowledged} ingestions from cut transactions",
        events_per_ingestion.len()
    );

    // After recovery the log and the projection agree for every ingestion, and a replay from
    // "0" through the gateway is that log.
    let missing = log_agrees_with_projection(&database, &sluice.client()).await;
    println!("event log after {KILLS} kills: {missing} events missing, replay equals the log");

    // A graceful stop: finishes and exits 0.
    let status = sluice.terminate(Duration::from_secs(60)).await;
    assert!(status.success(), "exit after SIGTERM: {status:?}");

    // The embedded store, reopened after twenty kills: each document once (one chunk each).
    let store =
        sluice_core::vector::edge::EdgeStore::open(&dir.path().join("data/vectors"), 384).unwrap();
    sluice_tests::assert_points(
        &store,
        TENANT,
        (0..DOCUMENTS).map(|i| format!("doc-{i}")),
        1,
    )
    .await;
    println!("vector store reopened: one point for each of the {DOCUMENTS} documents");
}

/// Checks the tenant's whole event log against the `ingestions` projection: numbered 1, 2, 3,
/// … without a gap; each ingestion ACCEPTED, then exactly one terminal event in its row's
/// final state (with its chunk count); no event without a row and no row without events. Then
/// replays the log from "0" through WatchIngestions and compares. Returns how many events an
/// ingestion's row implies but the log lacks (asserted zero).
async fn log_agrees_with_projection(
    database: &sea_orm::DatabaseConnection,
    client: &IngestServiceClient<Channel>,
) -> usize {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    use sluice_core::db::{ingestion, projection};
    use tokio_stream::StreamExt;

    let mut log = Vec::new();
    loop {
        let after = log
            .last()
            .map(|e: &sluice_core::db::event::Model| e.tenant_seq)
            .unwrap_or(0);
        let page = projection::events_after(database, TENANT, after, None, 1000)
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        log.extend(page);
    }
    let numbers: Vec<i64> = log.iter().map(|e| e.tenant_seq).collect();
    assert!(
        numbers.iter().zip(1..).all(|(n, expected)| *n == expected),
        "the log is not numbered 1..={} without gaps",
        log.len()
    );
    let rows = ingestion::Entity::find()
        .filter(ingestion::Column::Tenant.eq(TENANT))
        .all(database)
        .await
        .unwrap();
    let mut events: HashMap<&str, Vec<&sluice_core::db::event::Model>> = HashMap::new();
    for event in &log {
        events
            .entry(event.ingestion_id.as_str())
            .or_default()
            .push(event);
    }
    let mut missing = 0;
    let mut disagreements = Vec::new();
    for row in &rows {
        let got = events.remove(row.ingestion_id.as_str()).unwrap_or_default();
        let states: Vec<&str> = got.iter().map(|e| e.state.as_str()).collect();
        let expected = [ingestion::ACCEPTED, row.state.as_str()];
        missing += expected.iter().filter(|s| !states.contains(s)).count();
        let last_chunks = got.last().map(|e| e.chunk_count);
        if states != expected || last_chunks != Some(row.chunk_count) {
            disagreements.push(format!(
                "{}: log {states:?} (chunks {last_chunks:?}), projection {} ({} chunks)",
                row.ingestion_id, row.state, row.chunk_count
            ));
        }
    }
    assert!(
        events.is_empty(),
        "{} ingestions in the log have no row",
        events.len()
    );
    assert!(
        disagreements.is_empty(),
        "{missing} events missing; {} ingestions disagree, e.g. {:?}",
        disagreements.len(),
        &disagreements[..disagreements.len().min(3)]
    );

    // The same log, as a client replaying from "0" reads it.
    let mut stream = client
        .clone()
        .watch_ingestions(as_tenant(
            TENANT,
            sluice_core::proto::WatchIngestionsRequest {
                after_cursor: "0".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("replay from 0")
        .into_inner();
    let mut replayed = Vec::with_capacity(log.len());
    while replayed.len() < log.len() {
        let event = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "replay stalled after {} of {} events",
                    replayed.len(),
                    log.len()
                )
            })
            .expect("stream open")
            .expect("event");
        let ingestion = event.ingestion.unwrap();
        replayed.push((event.cursor, ingestion.ingestion_id, ingestion.state));
    }
    let expected: Vec<(String, String, i32)> = log
        .iter()
        .map(|e| {
            let ingestion = sluice_gateway::ingest::to_proto(&e.ingestion());
            (
                e.tenant_seq.to_string(),
                ingestion.ingestion_id,
                ingestion.state,
            )
        })
        .collect();
    assert_eq!(replayed, expected, "the replay differs from the log");
    missing
}

fn broker_kafka(broker: &Broker) -> sluice_core::config::KafkaConfig {
    sluice_core::config::KafkaConfig {
        bootstrap_servers: broker.bootstrap(),
        ..Default::default()
    }
}

/// The broker is killed and restarted (persistent storage) while documents arrive one by one:
/// calls in between are refused with UNAVAILABLE or ABORTED, never OK; every acknowledged
/// document ends up indexed, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_loses_nothing_acknowledged() {
    use sluice_core::proto::{IngestRequest, IngestionState};
    const COUNT: usize = 150;
    let mut stack =
        sluice_tests::Stack::start_with_persistent_broker(sluice_tests::Database::Sqlite).await;
    let client = stack.ingest_client().await;
    let sender = tokio::spawn(async move {
        let mut acknowledged = Vec::new();
        let mut refusals: HashMap<Code, usize> = HashMap::new();
        for i in 0..COUNT {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let mut request = as_tenant(
                    TENANT,
                    IngestRequest {
                        document: Some(document(
                            &format!("doc-{i}"),
                            "Restart",
                            &format!("Document {i} outlives the broker."),
                        )),
                        idempotency_key: format!("key-{i}"),
                        ..Default::default()
                    },
                );
                request.set_timeout(Duration::from_secs(20));
                match client.clone().ingest(request).await {
                    Ok(response) => {
                        acknowledged.push(response.into_inner().ingestion.unwrap().ingestion_id);
                        break;
                    }
                    Err(status) => {
                        *refusals.entry(status.code()).or_default() += 1;
                        assert!(
                            Instant::now() < deadline,
                            "doc-{i} never accepted: {status:?}"
                        );
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (acknowledged, refusals)
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.broker.kill();
    // Down for longer than a transaction step may take, so calls in between must be refused.
    tokio::time::sleep(sluice_gateway::ingest::appender::STEP_TIMEOUT + Duration::from_secs(2))
        .await;
    stack.broker.restart().await;
    let (acknowledged, refusals) = sender.await.unwrap();
    println!(
        "broker restart: {} acknowledged, refusals while it was down: {refusals:?}",
        acknowledged.len()
    );
    assert_eq!(acknowledged.len(), COUNT);
    assert!(
        !refusals.is_empty(),
        "no call was refused while the broker was down"
    );
    // The broker's absence (UNAVAILABLE, ABORTED), or the call's own deadline passing while it
    // waited for the broker (tonic reports that as CANCELLED "Timeout expired").
    for code in refusals.keys() {
        assert!(
            matches!(
                code,
                Code::Unavailable | Code::Aborted | Code::DeadlineExceeded | Code::Cancelled
            ),
            "refused with {code:?}"
        );
    }
    let ingest = stack.ingest_client().await;
    for id in &acknowledged {
        let ended = sluice_tests::ended(&ingest, TENANT, id, Duration::from_secs(180)).await;
        assert_eq!(
            sluice_tests::state(&ended),
            IngestionState::Indexed,
            "{ended:?}"
        );
    }
    sluice_tests::assert_points(
        stack.standalone().shared.store.as_ref(),
        TENANT,
        (0..COUNT).map(|i| format!("doc-{i}")),
        1,
    )
    .await;
    stack.shutdown().await;
}
