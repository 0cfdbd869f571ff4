//! Ingest throughput and latency against a local nisshi broker.
//!
//! `cargo bench -p sluice-tests --bench ingest`; with `SLUICE_BENCH_DATABASE=postgres` in front,
//! the gateway records on PostgreSQL (127.0.0.1:5432, a fresh database, as the tests use)
//! instead of SQLite.
//!
//! Starts a broker on loopback and a gateway (no worker, so indexing does not compete for the
//! CPU), then for each concurrency level sends a fixed number of Ingest calls and prints
//! documents/s, the p50/p99 latency of an acknowledged (committed) Ingest and how many calls
//! shared a transaction; then IngestBatch calls of 10, 100 and 500 documents. The anchor is a
//! bare rdkafka transactional producer with the gateway's settings, writing as many records
//! with the same value and headers as the gateway's in transactions of the same size. Bounded:
//! a few hundred calls per level.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use serde_json::json;
use sluice_client::{Client, Document};
use sluice_core::kafka::{settle_deliveries, transactional_config};
use sluice_core::record::{new_ingestion_id, now_ms, DocumentRecord, Operation};
use sluice_core::schema::DocumentSchema;
use sluice_core::tenant::TenantId;
use sluice_core::tenants::{Quotas, Tenants};
use sluice_gateway::server::{Gateway, Shared};
use sluice_tests::{metric_sum, tenant_id, test_config, Broker, Database};

const CALLS_PER_LEVEL: usize = 400;
/// IngestBatch and the bare producer take turns in this many blocks of calls per batch size,
/// with this pause after each block.
const BLOCKS: usize = 4;
const PAUSE: Duration = Duration::from_millis(300);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let broker = Broker::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The database matters to IngestBatch: a call's idempotency claim is a database write, and
    // on SQLite it waits for the previous call's record (one writer at a time, each commit
    // waiting for the disk).
    let database = match std::env::var("SLUICE_BENCH_DATABASE").as_deref() {
        Ok("postgres") => Database::Postgres,
        Ok("sqlite") | Err(_) => Database::Sqlite,
        Ok(other) => panic!("SLUICE_BENCH_DATABASE={other}: sqlite or postgres"),
    };
    let config = test_config(&broker, dir.path(), database).await;
    let shared = Shared::open(&config)
        .await
        .expect("open model, store, database");
    // Quotas high enough that the gateway, not the tenant's rate limit, is what is measured.
    Tenants::new(shared.db.clone())
        .create_tenant(
            "bench",
            &tenant_id("bench"),
            "benchmark",
            Quotas {
                documents_per_second: 1_000_000,
                bytes_per_second: 1 << 40,
                ..Quotas::default()
            },
        )
        .await
        .expect("register the bench tenant");
    let gateway = Gateway::start(&config, shared)
        .await
        .expect("start gateway");
    // Through the Rust SDK, as a tenant developer would send them (a fresh idempotency key per
    // call; no retries are needed here, so none happen).
    let client = Client::builder(format!("http://{}", gateway.grpc_addr))
        .dev_tenant("bench")
        .build()
        .expect("client");
    let text = "Sluice benchmark document. ".repeat(40);
    let fields = |text: &str| json!({"title": "Bench", "text": text, "source": "bench"});

    // The anchor: a bare rdkafka transactional producer, with the gateway's settings, writing
    // the gateway's records to the same topic in transactions of the same size as Sluice's.
    let producer: FutureProducer =
        transactional_config(&config.kafka, "bench-raw", Duration::from_secs(30))
            .create()
            .expect("raw producer");
    tokio::task::block_in_place(|| producer.init_transactions(Duration::from_secs(30)))
        .expect("init transactions");
    // What the gateway writes for one of these documents: its framed Avro value and its
    // headers (the key differs per record, as the gateway's do).
    let sample = DocumentRecord {
        tenant: TenantId::parse("bench").expect("tenant id"),
        document_id: "b500-39-499".into(),
        ingestion_id: new_ingestion_id(),
        operation: Operation::Upsert,
        attributes: BTreeMap::new(),
        schema_fingerprint: DocumentSchema::default_document().fingerprint().to_owned(),
        schema_id: Some(1),
        accepted_at_ms: now_ms(),
        payload: DocumentSchema::default_document()
            .encode_json(&fields(&text).to_string())
            .expect("the bench's document fits the default schema"),
        idempotency_key: Some(format!("{}#499", uuid::Uuid::new_v4())),
    };
    let (payload, headers) = (sample.value(), sample.headers());
    let topic = config.kafka.documents_topic.clone();
    let raw_transaction = |size: usize, call: usize| {
        let (producer, payload, headers, topic) = (&producer, &payload, &headers, &topic);
        async move {
            let t = Instant::now();
            // Off the async threads, as the gateway's producer does it.
            let begin = producer.clone();
            tokio::task::spawn_blocking(move || begin.begin_transaction())
                .await
                .unwrap()
                .expect("begin");
            let sends = (0..size).map(|i| {
                let key = format!("raw-{size}-{call}-{i}");
                async move {
                    let record = FutureRecord::to(topic)
                        .key(&key)
                        .payload(payload)
                        .headers(headers.clone());
                    producer.send(record, Timeout::Never).await
                }
            });
            for sent in futures::future::join_all(sends).await {
                sent.map_err(|(error, _)| error).expect("send");
            }
            // Past rdkafka's race between a delivery and a commit, as the gateway is (without
            // it, a commit right after the last delivery often waits 100 ms).
            let commit = producer.clone();
            tokio::task::spawn_blocking(move || {
                settle_deliveries(&commit);
                commit.commit_transaction(Duration::from_secs(30))
            })
            .await
            .unwrap()
            .expect("commit");
            t.elapsed()
        }
    };

    // Ingest, one document a call, from several callers at once: calls that arrive while a
    // transaction is in flight share the next one (group commit). The anchor then writes as
    // many records in transactions of the size Sluice's had on average at that level, one
    // after another (a transactional producer has one transaction open at a time, as the
    // gateway's appender does).
    println!(
        "Ingest against nisshi on loopback, {CALLS_PER_LEVEL} calls per level, ~1 KiB documents; \
         the gateway's database: {database:?} (SLUICE_BENCH_DATABASE)"
    );
    println!(
        "{:>12} {:>10} {:>9} {:>9} {:>9} {:>10} {:>12} {:>11} {:>11}",
        "concurrency",
        "docs/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "calls/txn",
        "records/txn",
        "raw docs/s",
        "Sluice/raw"
    );
    for concurrency in [1usize, 8, 32, 128] {
        let before = Transactions::read();
        let started = Instant::now();
        let mut tasks = Vec::new();
        for worker in 0..concurrency {
            let client = client.clone();
            let fields = fields(&text);
            let calls = CALLS_PER_LEVEL / concurrency;
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(calls);
                for i in 0..calls {
                    let t = Instant::now();
                    client
                        .ingest(format!("c{concurrency}-w{worker}-{i}"), &fields)
                        .await
                        .expect("ingest");
                    latencies.push(t.elapsed());
                }
                latencies
            }));
        }
        let mut latencies: Vec<Duration> = Vec::new();
        for task in tasks {
            latencies.extend(task.await.unwrap());
        }
        let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
        let made = Transactions::read().since(&before);
        tokio::time::sleep(PAUSE).await;
        // The same number of records in transactions of the same size, bare.
        let size = made.records_per_transaction().round().max(1.0) as usize;
        let transactions = latencies.len().div_ceil(size);
        let started = Instant::now();
        for call in 0..transactions {
            raw_transaction(size, concurrency * 100_000 + call).await;
        }
        let raw_rate = (transactions * size) as f64 / started.elapsed().as_secs_f64();
        tokio::time::sleep(PAUSE).await;
        latencies.sort();
        let at = |q: f64| sluice_tests::quantile_ms(&latencies, q);
        println!(
            "{concurrency:>12} {rate:>10.1} {:>9.1} {:>9.1} {:>9.1} {:>10.1} {:>12.1} {raw_rate:>11.1} {:>11.2}",
            at(0.50),
            at(0.99),
            at(1.0),
            made.requests_per_transaction(),
            made.records_per_transaction(),
            rate / raw_rate,
        );
        made.print_stages();
    }
    println!(
        "(Sluice/raw: documents/s through Ingest ÷ the bare producer's, as many records in \
         transactions of the same size; goal ≥ 0.90)"
    );

    // IngestBatch against the same anchor, as many records per transaction. Each side sends
    // its calls back to back in blocks, and the blocks take turns (with a pause, so that
    // neither meets the other's leftover work), so both meet the same machine and the same
    // broker, whose occasional 100 ms commit may fall on either; the ratio is of the medians,
    // which such a commit does not move.
    println!();
    println!("IngestBatch (one transaction per call) and the bare producer (the anchor), in {BLOCKS} blocks of calls each, taking turns");
    println!(
        "{:>10} {:>8} {:>12} {:>10} {:>10} {:>10} {:>14}",
        "batch", "", "docs/s", "p50 ms", "p99 ms", "max ms", "Sluice/raw"
    );
    for size in [10usize, 100, 500] {
        let calls = calls_for(size);
        let before = Transactions::read();
        let (mut sluice, mut raw) = (Vec::with_capacity(calls), Vec::with_capacity(calls));
        for block in (0..calls).collect::<Vec<_>>().chunks(calls / BLOCKS) {
            for &call in block {
                let documents: Vec<Document> = (0..size)
                    .map(|i| Document::new(format!("b{size}-{call}-{i}"), fields(&text)))
                    .collect();
                let t = Instant::now();
                client
                    .ingest_many(documents)
                    .batch_size(size)
                    .await
                    .expect("batch");
                sluice.push(t.elapsed());
            }
            tokio::time::sleep(PAUSE).await;
            for &call in block {
                raw.push(raw_transaction(size, call).await);
            }
            tokio::time::sleep(PAUSE).await;
        }
        let made = Transactions::read().since(&before);
        let (sluice, raw) = (Calls::of(sluice, size), Calls::of(raw, size));
        sluice.print(&size.to_string(), "Sluice", "");
        raw.print(
            "",
            "raw",
            &format!(
                "{:.2} ({:.2})",
                raw.p50 / sluice.p50,
                sluice.rate / raw.rate
            ),
        );
        made.print_stages();
    }
    println!("(Sluice/raw: of the medians, and in brackets of docs/s over all calls; goal ≥ 0.90)");
    gateway.shutdown().await;
}

/// IngestBatch calls per batch size, for Sluice and the bare producer alike: at least 20, so
/// that one of the broker's occasional 100 ms commits does not decide the figure (with 4 calls
/// of 500 it moved the ratio by 0.2).
fn calls_for(size: usize) -> usize {
    (10_000 / size).clamp(20, 40)
}

/// One side's calls of one batch size.
struct Calls {
    /// Documents/s over the time its calls took in all.
    rate: f64,
    p50: f64,
    p99: f64,
    max: f64,
}

impl Calls {
    fn of(mut latencies: Vec<Duration>, docs_per_call: usize) -> Self {
        latencies.sort();
        let at = |q: f64| sluice_tests::quantile_ms(&latencies, q);
        let total: Duration = latencies.iter().sum();
        Self {
            rate: (latencies.len() * docs_per_call) as f64 / total.as_secs_f64(),
            p50: at(0.5),
            p99: at(0.99),
            max: at(1.0),
        }
    }

    fn print(&self, batch: &str, side: &str, ratio: &str) {
        println!(
            "{batch:>10} {side:>8} {:>12.1} {:>10.1} {:>10.1} {:>10.1} {ratio:>14}",
            self.rate, self.p50, self.p99, self.max
        );
    }
}

/// The appender's transactions so far, and where a call's time went, from the gateway's
/// metrics (this process runs one gateway).
struct Transactions {
    transactions: f64,
    requests: f64,
    records: f64,
    /// Seconds in all and how many, for each stage.
    stages: Vec<(&'static str, f64, f64)>,
}

/// The stages of a call the gateway times: the idempotency claim (its wait included), the
/// Kafka transaction, and the recording after the answer (which the next claim may wait for:
/// both are database transactions).
const STAGES: [(&str, &str, &[&str]); 3] = [
    (
        "claim",
        "sluice_gateway_database_duration_seconds",
        &["operation=\"claim\""],
    ),
    (
        "transaction",
        "sluice_gateway_transaction_duration_seconds",
        &[],
    ),
    (
        "record",
        "sluice_gateway_database_duration_seconds",
        &["operation=\"record_accepted\""],
    ),
];

impl Transactions {
    fn read() -> Self {
        let metrics = sluice_core::metrics::render();
        let sum = |name: &str, labels: &[&str]| metric_sum(&metrics, name, labels);
        let appender = ["group=\"appender\""];
        Self {
            transactions: sum(
                "sluice_gateway_group_commit_requests_per_batch_count",
                &appender,
            ),
            requests: sum(
                "sluice_gateway_group_commit_requests_per_batch_sum",
                &appender,
            ),
            records: sum("sluice_gateway_transaction_records_per_batch_sum", &[]),
            stages: STAGES
                .iter()
                .map(|(stage, name, labels)| {
                    (
                        *stage,
                        sum(&format!("{name}_sum"), labels),
                        sum(&format!("{name}_count"), labels),
                    )
                })
                .collect(),
        }
    }

    fn since(&self, before: &Self) -> Self {
        Self {
            transactions: self.transactions - before.transactions,
            requests: self.requests - before.requests,
            records: self.records - before.records,
            stages: self
                .stages
                .iter()
                .zip(&before.stages)
                .map(|((stage, sum, count), (_, sum0, count0))| {
                    (*stage, sum - sum0, count - count0)
                })
                .collect(),
        }
    }

    fn requests_per_transaction(&self) -> f64 {
        self.requests / self.transactions.max(1.0)
    }

    fn records_per_transaction(&self) -> f64 {
        self.records / self.transactions.max(1.0)
    }

    /// The mean of each stage, on a line of its own.
    fn print_stages(&self) {
        let means: Vec<String> = self
            .stages
            .iter()
            .map(|(stage, sum, count)| format!("{stage} {:.2} ms", 1000.0 * sum / count.max(1.0)))
            .collect();
        println!("{:>12} gateway, means: {}", "", means.join(", "));
    }
}
