//! The worker against its own model: documents/s end to end (IngestBatch through the gateway
//! until every document is INDEXED) beside the embedder alone on the same texts, in one run.
//! First on the standalone stack (broker, SQLite, the embedded store, one process); then, when
//! `SLUICE_TEST_QDRANT_URL` names a Qdrant server, on the distributed shape: a gateway process
//! and a `sluice-worker` process on PostgreSQL and that server.
//!
//! `cargo bench -p sluice-tests --bench pipeline --profile dev` (reuses the test build); with
//! `SLUICE_MODEL__PRECISION=int8` in front, the same with the int8 model.
//!
//! The corpus is the one issue 14 measured: 400 documents of 30–120 words (≈ 100 tokens, one
//! chunk each). Five rounds, each the embedder alone and then the pipeline on the same texts;
//! the table shows each round's ratio, the median of those, and the ratio of the medians. The goal: the worker at
//! ≥ 90% of the embedder's own throughput (decoding, chunking, the store and the Kafka
//! transactions cost ≤ 10%). Peak RSS is the whole process (gateway and worker together).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sluice_client::{Client, Document, IngestionState};
use sluice_embed::Embedder;
use sluice_tests::{
    metric_sum, qdrant_url, quantile_ms, test_collection, Cluster, Database, Stack,
};

const DOCUMENTS: usize = 400;
const ROUNDS: usize = 5;
const BATCH: usize = 100;
/// Documents ingested one at a time, each waited for, for the light-load latency.
const LIGHT_DOCUMENTS: usize = 40;

const WORDS: [&str; 48] = [
    "kafka",
    "partition",
    "consumer",
    "tenant",
    "document",
    "schema",
    "vector",
    "search",
    "harbour",
    "tide",
    "moon",
    "glacier",
    "river",
    "bread",
    "oven",
    "marathon",
    "runner",
    "printing",
    "press",
    "volcano",
    "lava",
    "revenue",
    "market",
    "patient",
    "symptom",
    "maintenance",
    "window",
    "broker",
    "segment",
    "retention",
    "support",
    "billing",
    "the",
    "a",
    "of",
    "and",
    "in",
    "while",
    "because",
    "every",
    "evening",
    "quickly",
    "slowly",
    "north",
    "south",
    "report",
    "weather",
    "storm",
];

/// Document `n` of round `round`: 30–120 words, deterministic.
fn text(round: usize, n: usize) -> String {
    let mut state = (round * 1_000_003 + n * 7919 + 17) as u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    let words = 30 + next() % 91;
    (0..words)
        .map(|_| WORDS[next() % WORDS.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

/// Seconds the worker's model has spent embedding, by its own metric (0 when the worker runs
/// in another process).
fn embedding_seconds() -> f64 {
    metric_sum(
        &sluice_core::metrics::render(),
        "sluice_worker_embedding_duration_seconds_sum",
        &[],
    )
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `SLUICE_MODEL__PRECISION=int8` runs both shapes with the int8 model: the standalone stack
    // is configured here, and the cluster's processes read it from the environment, as every
    // Sluice process does.
    let precision = std::env::var("SLUICE_MODEL__PRECISION").unwrap_or_else(|_| "fp32".into());
    let stack = Stack::start_configured(Database::Sqlite, |config| {
        config.model.precision = precision.clone();
    })
    .await;
    stack.generous_tenant("bench").await;
    println!("model precision: {precision} (SLUICE_MODEL__PRECISION)");
    let embedder = stack.standalone().shared.embedder.clone();
    let sluice = Client::builder(stack.grpc_url())
        .dev_tenant("bench")
        .batch_size(BATCH)
        .wait_timeout(Duration::from_secs(600))
        .build()
        .expect("client");
    println!("standalone: one process, the embedded store");
    rounds(&sluice, &embedder).await;
    light_load(&sluice, &embedder).await;
    println!(
        "peak RSS of the standalone process: {:.0} MB",
        sluice_tests::peak_rss_mb("/proc/self/status").unwrap_or(0.0)
    );
    // Where the worker's time went, from its own metrics (every round together).
    let metrics = sluice_core::metrics::render();
    let total = |name: &str| metric_sum(&metrics, name, &[]);
    println!("worker stages, in all rounds:");
    for (stage, name) in [
        (
            "embed (per batch)",
            "sluice_worker_embedding_duration_seconds",
        ),
        (
            "upsert (per batch)",
            "sluice_worker_upsert_duration_seconds",
        ),
        (
            "commit (per batch)",
            "sluice_worker_commit_duration_seconds",
        ),
    ] {
        let (sum, count) = (
            total(&format!("{name}_sum")),
            total(&format!("{name}_count")),
        );
        println!(
            "  {stage:<22} {sum:>7.2} s over {count:>5.0} ({:.1} ms each)",
            1000.0 * sum / count.max(1.0)
        );
    }
    // The gateway's side: completions recorded, and in how many database transactions.
    let recorded = metric_sum(&metrics, "sluice_worker_documents_indexed_total", &[]);
    let applied = |suffix: &str| {
        metric_sum(
            &metrics,
            &format!("sluice_gateway_database_duration_seconds{suffix}"),
            &["operation=\"apply_completion\""],
        )
    };
    let (sum, transactions) = (applied("_sum"), applied("_count"));
    println!(
        "gateway: {recorded:.0} completions recorded in {transactions:.0} database transactions \
         ({:.1} ms each)",
        1000.0 * sum / transactions.max(1.0)
    );
    stack.shutdown().await;

    let Some(url) = qdrant_url("the pipeline bench on a Qdrant server") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(dir.path(), &url, &test_collection("pipeline")).await;
    cluster.create_tenant("bench").await;
    cluster.add_gateway().await;
    cluster.add_worker().await;
    let channel = cluster.channel(0, "bench").await;
    let sluice = Client::builder(format!(
        "https://127.0.0.1:{}",
        cluster.gateways[0].grpc.expect("a gateway")
    ))
    .batch_size(BATCH)
    .wait_timeout(Duration::from_secs(600))
    .build_with_channel(channel)
    .expect("client");
    println!();
    println!("distributed: a gateway process and a sluice-worker process, PostgreSQL, the Qdrant server at {url}");
    rounds(&sluice, &embedder).await;
    light_load(&sluice, &embedder).await;
    let rss = |member: &sluice_tests::Member| member.peak_rss_mb().unwrap_or(0.0);
    println!(
        "peak RSS: gateway {:.0} MB (goal ≤ 150), worker {:.0} MB (goal ≤ 400)",
        rss(&cluster.gateways[0]),
        rss(&cluster.workers[0])
    );
    cluster.shutdown().await;
}

/// Ingest → searchable at light load: one document at a time, `wait: true` (the call returns
/// once it is INDEXED, so searchable), beside the embedding of the same text alone. The goal:
/// p50 within 50 ms of the embedding time.
async fn light_load(sluice: &Client, embedder: &Arc<Embedder>) {
    let (mut ingested, mut embedded) = (Vec::new(), Vec::new());
    for n in 0..LIGHT_DOCUMENTS {
        let text = text(ROUNDS + 1, n);
        let (model, alone) = (embedder.clone(), text.clone());
        let started = Instant::now();
        tokio::task::spawn_blocking(move || model.embed(&[alone.as_str()]).expect("embed"))
            .await
            .unwrap();
        embedded.push(started.elapsed());

        let started = Instant::now();
        let fields = json!({"title": "Bench", "text": text, "source": "bench"});
        let ingestion = sluice
            .ingest(format!("light-{n}"), &fields)
            .wait(true)
            .send()
            .await
            .expect("ingest");
        ingested.push(started.elapsed());
        assert_eq!(ingestion.state, IngestionState::Indexed);
    }
    ingested.sort();
    embedded.sort();
    let (p50, embedding_p50) = (quantile_ms(&ingested, 0.5), quantile_ms(&embedded, 0.5));
    println!(
        "light load, {LIGHT_DOCUMENTS} documents one at a time with wait=true: ingest → searchable \
         p50 {p50:.1} ms, p90 {:.1} ms; the embedding alone p50 {embedding_p50:.1} ms; \
         the rest p50 {:.1} ms (goal ≤ 50)",
        quantile_ms(&ingested, 0.9),
        p50 - embedding_p50
    );
}

/// Each round's documents through `sluice` until INDEXED, beside `embedder` alone on the same
/// texts; prints a line per round and the median.
async fn rounds(sluice: &Client, embedder: &Arc<Embedder>) {
    println!("{DOCUMENTS} documents of 30–120 words, one chunk each; {ROUNDS} rounds");
    println!(
        "{:>6} {:>16} {:>16} {:>14} {:>8} {:>11} {:>14}",
        "round",
        "embedder docs/s",
        "pipeline docs/s",
        "tokens/doc",
        "ratio",
        "model busy",
        "model speed"
    );
    let (mut alone, mut piped, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let texts: Vec<String> = (0..DOCUMENTS).map(|n| text(round, n)).collect();
        let tokens: usize = texts.iter().map(|t| embedder.count_tokens(t) + 2).sum();

        // The embedder alone, as the worker's (it splits the texts into `model.max_batch`).
        let started = Instant::now();
        let model = embedder.clone();
        let all = texts.clone();
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            model.embed(&refs).expect("embed");
        })
        .await
        .unwrap();
        let embedder_rate = DOCUMENTS as f64 / started.elapsed().as_secs_f64();

        // The same texts through the gateway (IngestBatch calls of BATCH) until INDEXED.
        let embedding_before = embedding_seconds();
        let started = Instant::now();
        let documents = texts.iter().enumerate().map(|(n, text)| {
            Document::new(
                format!("r{round}-{n}"),
                json!({"title": "Bench", "text": text, "source": "bench"}),
            )
        });
        let accepted = sluice.ingest_many(documents).await.expect("ingest");
        let ended = sluice
            .wait_for(accepted.iter().map(|i| i.ingestion_id.clone()), None)
            .await
            .expect("all ended");
        let elapsed = started.elapsed().as_secs_f64();
        let pipeline_rate = DOCUMENTS as f64 / elapsed;
        assert!(ended.iter().all(|i| i.state == IngestionState::Indexed));
        // Where the ratio goes: the share of the round the worker's model was embedding, and
        // its speed then beside the embedder alone's (1.00: as fast). Their product is the
        // ratio. Only known when the worker runs in this process (its metrics are here).
        let embedding = embedding_seconds() - embedding_before;
        let (busy, speed) = if embedding > 0.0 {
            (
                format!("{:.0}%", 100.0 * embedding / elapsed),
                format!("{:.2}", DOCUMENTS as f64 / embedding / embedder_rate),
            )
        } else {
            ("-".into(), "-".into())
        };
        println!(
            "{:>6} {:>16.1} {:>16.1} {:>14.0} {:>8.2} {busy:>11} {speed:>14}",
            round + 1,
            embedder_rate,
            pipeline_rate,
            tokens as f64 / DOCUMENTS as f64,
            pipeline_rate / embedder_rate
        );
        alone.push(embedder_rate);
        piped.push(pipeline_rate);
        ratios.push(pipeline_rate / embedder_rate);
    }
    // Each round pairs the two on the same texts a few seconds apart, so the median of the
    // rounds' ratios is the steadier figure on a noisy machine; the ratio of the medians
    // is printed beside it.
    let (alone, piped) = (median(alone), median(piped));
    println!(
        "{:>6} {:>16.1} {:>16.1} {:>14} {:>8.2}   (median of the rounds' ratios; goal ≥ 0.90; ratio of the medians {:.2})",
        "median",
        alone,
        piped,
        "",
        median(ratios),
        piped / alone
    );
}
