//! Fairness: tenant A sends at ten times its quota while tenant B's Ingest latency stays within
//! twice its baseline; tenant A's large document delays tenant B's small one by no more than
//! its own indexing time. Ignored in the main run, so no other test shares the two cores while it
//! measures: `deploy/dev/test` runs it alone afterwards.

use std::time::{Duration, Instant};

use sluice_core::proto::ingest_service_client::IngestServiceClient;
use sluice_core::proto::{GetIngestionRequest, IngestRequest, IngestionState};
use sluice_core::tenants::QuotaUpdate;
use sluice_tests::{as_tenant, document, ended, ingest_batch, state, tenant_id, Database, Stack};
use tonic::Code;

fn note(id: &str) -> IngestRequest {
    IngestRequest {
        document: Some(document(id, id, "A short note about quotas.")),
        ..Default::default()
    }
}

/// Tenant A sends at ten times its quota; tenant B's Ingest latency stays within twice its
/// baseline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measures latency: runs alone, after the rest (deploy/dev/test)"]
async fn a_flooding_tenant_does_not_slow_another() {
    const A_QUOTA: u32 = 10;
    let stack = Stack::start_tls(Database::Sqlite, &["tenant-a", "tenant-b"]).await;
    let tenants = stack.tenants().await;
    tenants
        .set_quotas(
            "tests",
            &tenant_id("tenant-a"),
            QuotaUpdate {
                documents_per_second: Some(A_QUOTA),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let a = IngestServiceClient::new(stack.client_channel("tenant-a").await);
    let mut b = IngestServiceClient::new(stack.client_channel("tenant-b").await);
    tokio::time::sleep(Duration::from_secs(1)).await;

    async fn median_latency(
        client: &mut IngestServiceClient<tonic::transport::Channel>,
        label: &str,
    ) -> Duration {
        let mut latencies = Vec::new();
        for i in 0..31 {
            let started = Instant::now();
            client
                .ingest(note(&format!("{label}-{i}")))
                .await
                .expect("tenant B is never refused");
            latencies.push(started.elapsed());
        }
        latencies.sort();
        latencies[latencies.len() / 2]
    }

    let warmup = median_latency(&mut b, "warmup").await;
    let baseline = median_latency(&mut b, "baseline").await;

    // A: 100 documents a second (ten times its quota) for as long as B measures.
    let flood = tokio::spawn(async move {
        let mut sent = 0u32;
        let mut refused = 0u32;
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut in_flight = tokio::task::JoinSet::new();
        while started.elapsed() < Duration::from_secs(6) {
            tick.tick().await;
            let mut a = a.clone();
            let id = format!("flood-{sent}");
            in_flight.spawn(async move { a.ingest(note(&id)).await.map(|_| ()) });
            sent += 1;
        }
        while let Some(result) = in_flight.join_next().await {
            if let Err(status) = result.expect("task") {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                refused += 1;
            }
        }
        (sent, refused)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let under_flood = median_latency(&mut b, "flooded").await;
    let (sent, refused) = flood.await.unwrap();

    println!(
        "tenant B median Ingest latency: warm-up {warmup:?}, baseline {baseline:?}, \
         while A floods {under_flood:?}; A sent {sent}, {refused} refused"
    );
    assert!(sent >= 300, "A sent only {sent}");
    assert!(
        refused as f64 >= sent as f64 * 0.7,
        "A's quota held: {refused} of {sent} refused"
    );
    assert!(
        under_flood <= baseline * 2,
        "B slowed from {baseline:?} to {under_flood:?}"
    );
    stack.shutdown().await;
}

/// One tenant's large document delays another tenant's small one behind it in the worker by
/// about its own embedding time, and no more: per-record work is bounded
/// (`chunking.max_document_tokens`), and nothing replays. Prints the delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measures latency: runs alone, after the rest (deploy/dev/test)"]
async fn a_large_document_delays_others_by_its_embedding_time_only() {
    let stack = Stack::start_tls(Database::Sqlite, &["tenant-a", "tenant-b"]).await;
    let mut a = IngestServiceClient::new(stack.client_channel("tenant-a").await)
        .max_encoding_message_size(usize::MAX);
    let mut b = IngestServiceClient::new(stack.client_channel("tenant-b").await);
    let waiting = |id: &str| IngestRequest {
        wait: true,
        ..note(id)
    };

    let mut baseline = Vec::new();
    for i in 0..5 {
        let started = Instant::now();
        let done = b.ingest(waiting(&format!("alone-{i}"))).await.unwrap();
        assert_eq!(
            done.into_inner().ingestion.unwrap().state,
            IngestionState::Indexed as i32
        );
        baseline.push(started.elapsed());
    }
    baseline.sort();
    let baseline = baseline[2];

    // About 30,000 tokens: over a hundred chunks.
    let text = "Kafka keeps records in order within a partition. ".repeat(3_000);
    let large = IngestRequest {
        document: Some(document("large", "large", &text)),
        ..Default::default()
    };
    let sent = Instant::now();
    let large = a
        .ingest(large)
        .await
        .unwrap()
        .into_inner()
        .ingestion
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let small = b.ingest(waiting("behind")).await.unwrap().into_inner();
    let behind = started.elapsed();
    assert_eq!(
        small.ingestion.unwrap().state,
        IngestionState::Indexed as i32
    );
    // When A's document finished: GetIngestion until it is no longer ACCEPTED.
    let large_indexed = loop {
        let now = a
            .get_ingestion(GetIngestionRequest {
                ingestion_id: large.ingestion_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if now.state != IngestionState::Accepted as i32 {
            assert_eq!(now.state, IngestionState::Indexed as i32, "{now:?}");
            break sent.elapsed();
        }
        assert!(sent.elapsed() < Duration::from_secs(300), "never indexed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "tenant B's small document, sent 0.2 s after tenant A's {} KB document (~30,000 tokens): \
         indexed after {behind:?} (alone: {baseline:?}); A's document was indexed {large_indexed:?} \
         after it was sent",
        text.len() / 1000
    );
    // Delayed by at most the one document ahead of it (plus its own time), never replayed.
    assert!(
        behind <= large_indexed + baseline * 2 + Duration::from_secs(2),
        "B waited {behind:?}, longer than A's document took ({large_indexed:?})"
    );
    stack.shutdown().await;
}

/// Tenant A ingests ten times as many documents as tenant B at the same time. The worker reads
/// each partition in order, so B's documents wait behind A's already in the partition: B's
/// delay is A's backlog ahead of it divided by the indexing rate, bounded by what A's quota lets
/// it queue. Prints B's latency (accepted → INDEXED) alone and beside A, and asserts that each
/// of B's documents waited no longer than indexing everything accepted before it takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measures latency: runs alone, after the rest (deploy/dev/test)"]
async fn ten_times_the_documents_delay_another_tenant_by_the_backlog_only() {
    const B_DOCUMENTS: usize = 30;
    let stack = Stack::start(Database::Sqlite).await;
    stack.generous_tenant("tenant-a").await;
    stack.generous_tenant("tenant-b").await;
    let client = stack.ingest_client().await;

    // B's latency: each of its documents from acceptance to INDEXED, one every 100 ms.
    async fn b_latencies(
        client: &IngestServiceClient<tonic::transport::Channel>,
        label: &str,
    ) -> Vec<Duration> {
        let mut ids = Vec::new();
        for i in 0..B_DOCUMENTS {
            let request = as_tenant("tenant-b", note(&format!("{label}-{i}")));
            let accepted = client.clone().ingest(request).await.unwrap().into_inner();
            ids.push(accepted.ingestion.unwrap().ingestion_id);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut latencies = Vec::new();
        for id in ids {
            let done = ended(client, "tenant-b", &id, Duration::from_secs(300)).await;
            assert_eq!(state(&done), IngestionState::Indexed);
            let (accepted, completed) = (done.accepted_at.unwrap(), done.completed_at.unwrap());
            let ms = (completed.seconds - accepted.seconds) * 1000
                + i64::from(completed.nanos - accepted.nanos) / 1_000_000;
            latencies.push(Duration::from_millis(ms.max(0) as u64));
        }
        latencies.sort();
        latencies
    }
    let alone = b_latencies(&client, "alone").await;

    // A sends ten times as many, in batches of 50, while B sends its own.
    let flood = tokio::spawn({
        let client = client.clone();
        async move {
            let started = Instant::now();
            let mut ids = Vec::new();
            for batch in 0..(10 * B_DOCUMENTS / 50) {
                let documents = (0..50)
                    .map(|i| {
                        let n = batch * 50 + i;
                        document(
                            &format!("a-{n}"),
                            "A",
                            &format!("Tenant A's note {n} on tides and harbours."),
                        )
                    })
                    .collect();
                ids.extend(ingest_batch(&client, "tenant-a", documents, "").await);
            }
            (ids, started.elapsed())
        }
    });
    let beside = b_latencies(&client, "beside").await;
    let (a_ids, a_sent_in) = flood.await.unwrap();
    let mut a_last = Duration::ZERO;
    let a_started = Instant::now();
    for id in &a_ids {
        let done = ended(&client, "tenant-a", id, Duration::from_secs(300)).await;
        assert_eq!(state(&done), IngestionState::Indexed);
        a_last = a_started.elapsed();
    }
    let at = |l: &[Duration], q: f64| l[((l.len() - 1) as f64 * q).round() as usize];
    println!(
        "tenant B's {B_DOCUMENTS} documents, accepted → INDEXED: alone p50 {:?} max {:?}; beside \
         tenant A's {} (sent in {a_sent_in:?}) p50 {:?} p90 {:?} max {:?}",
        at(&alone, 0.5),
        at(&alone, 1.0),
        a_ids.len(),
        at(&beside, 0.5),
        at(&beside, 0.9),
        at(&beside, 1.0),
    );
    // The FIFO bound: no more than indexing all of A's documents (and B's own) takes.
    let bound = a_sent_in + a_last + at(&alone, 1.0) * 2 + Duration::from_secs(5);
    assert!(
        at(&beside, 1.0) <= bound,
        "B waited {:?}, more than A's whole backlog takes ({bound:?})",
        at(&beside, 1.0)
    );
    stack.shutdown().await;
}
