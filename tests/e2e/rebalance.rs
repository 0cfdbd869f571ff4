//! Workers joining and leaving the group while it works. A worker embeds one batch while it
//! writes and commits the one before, so a partition can be revoked while a batch is at the
//! model; its records must then be left to their new owner, neither written nor committed
//! here. Checked at scale: 600 documents and 150 deletions of them through four partitions
//! while workers come and go ten times; afterwards every ingestion ended exactly once, and the
//! store holds each kept document once and no deleted one (a stale write after the new owner's
//! delete would bring it back).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sluice_core::proto::DeleteDocumentRequest;
use sluice_tests::{
    as_tenant, assert_points, document, ended_rows, ingest_batch, metric_sum, terminal_events,
    Database, Stack,
};

const TENANT: &str = "acme";
const BATCHES: usize = 30;
const BATCH: usize = 20;
/// Every DELETE_EVERY-th document is deleted right after its batch is accepted.
const DELETE_EVERY: usize = 4;
/// Workers joining or leaving, one every CHURN_PAUSE.
const CHURN: usize = 10;
const CHURN_PAUSE: Duration = Duration::from_millis(800);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_coming_and_going_lose_nothing_and_bring_nothing_back() {
    let group = format!("workers-{}", uuid::Uuid::new_v4().simple());
    let mut stack = Stack::start_configured(Database::Sqlite, move |config| {
        config.worker.group_id = group;
        config.kafka.documents_partitions = 4;
    })
    .await;
    stack.generous_tenant(TENANT).await;
    // Workers of our own, in the stack's group, so they can come and go.
    stack.standalone_mut().stop_worker().await;
    let spawn = |n: usize| stack.worker(&format!("churn-{n}")).spawn();
    let mut workers = vec![spawn(0)];
    let mut spawned = 1;

    // The tenant sends its documents and deletions...
    let client = stack.ingest_client().await;
    let started = Instant::now();
    let sender = tokio::spawn(async move {
        let mut expected = HashMap::new();
        for batch in 0..BATCHES {
            let ids: Vec<usize> = (batch * BATCH..(batch + 1) * BATCH).collect();
            let documents = ids
                .iter()
                .map(|i| {
                    document(
                        &format!("doc-{i}"),
                        "Churn",
                        // About 150 tokens: batches spend long enough at the model for
                        // rebalances to land while they are there.
                        &format!("Document {i} is indexed while workers join and leave. ")
                            .repeat(12),
                    )
                })
                .collect();
            let accepted =
                ingest_batch(&client, TENANT, documents, &format!("batch-{batch}")).await;
            for (i, ingestion) in ids.iter().zip(accepted) {
                expected.insert(ingestion, "indexed");
                if i % DELETE_EVERY == 0 {
                    let deleted = client
                        .clone()
                        .delete_document(as_tenant(
                            TENANT,
                            DeleteDocumentRequest {
                                document_id: format!("doc-{i}"),
                                ..Default::default()
                            },
                        ))
                        .await
                        .expect("delete")
                        .into_inner()
                        .ingestion
                        .expect("an ingestion");
                    expected.insert(deleted.ingestion_id, "deleted");
                }
            }
        }
        expected
    });
    // ...while workers join and leave: up to three at once, never none.
    for step in 0..CHURN {
        tokio::time::sleep(CHURN_PAUSE).await;
        if workers.len() < 3 && (step % 3 != 2 || workers.len() == 1) {
            workers.push(spawn(spawned));
            spawned += 1;
        } else {
            workers.remove(0).shutdown().await;
        }
    }
    let expected = sender.await.unwrap();
    println!(
        "{} ingestions sent in {:.1?} while {CHURN} workers joined or left; {} workers now",
        expected.len(),
        started.elapsed(),
        workers.len()
    );

    // Every ingestion ends as it should.
    let database = sluice_core::db::connect(&stack.config.database_url())
        .await
        .unwrap();
    let ids: Vec<String> = expected.keys().cloned().collect();
    for row in ended_rows(&database, TENANT, &ids, Duration::from_secs(300)).await {
        assert_eq!(
            row.state, expected[&row.ingestion_id],
            "{} ({})",
            row.ingestion_id, row.document_id
        );
    }
    println!("all ended after {:.1?}", started.elapsed());

    // Exactly one terminal event each.
    let counts = terminal_events(&database).await;
    for id in &ids {
        assert_eq!(counts.get(id), Some(&1), "terminal events of {id}");
    }

    // The store: each kept document once, each deleted one gone.
    let store = stack.standalone().shared.store.clone();
    let all = 0..BATCHES * BATCH;
    assert_points(
        store.as_ref(),
        TENANT,
        all.clone()
            .filter(|i| i % DELETE_EVERY != 0)
            .map(|i| format!("doc-{i}")),
        1,
    )
    .await;
    assert_points(
        store.as_ref(),
        TENANT,
        all.filter(|i| i % DELETE_EVERY == 0)
            .map(|i| format!("doc-{i}")),
        0,
    )
    .await;
    let metrics = sluice_core::metrics::render();
    println!(
        "store agrees; records of revoked partitions left to their new owner: {:.0}",
        metric_sum(&metrics, "sluice_worker_revoked_records_total", &[])
    );

    for worker in workers {
        worker.shutdown().await;
    }
    drop(store);
    stack.shutdown().await;
}
