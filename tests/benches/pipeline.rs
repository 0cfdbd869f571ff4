//! The worker against its own model: documents/s end to end (IngestBatch through the gateway
//! until every document is INDEXED, on the standalone stack: broker, SQLite, the embedded
//! store) beside the embedder alone on the same texts, in one run.
//!
//! `cargo bench -p sluice-tests --bench pipeline --profile dev` (reuses the test build)
//!
//! The corpus is the one issue 14 measured: 400 documents of 30–120 words (≈ 100 tokens, one
//! chunk each). Three rounds; the table shows each and the median. The goal: the worker at
//! ≥ 90% of the embedder's own throughput (decoding, chunking, the store and the Kafka
//! transactions cost ≤ 10%). Peak RSS is the whole process (gateway and worker together).

use std::time::{Duration, Instant};

use serde_json::json;
use sluice_client::{Client, Document, IngestionState};
use sluice_tests::{metric_sum, Database, Stack};

const DOCUMENTS: usize = 400;
const ROUNDS: usize = 3;
const BATCH: usize = 100;

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

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let stack = Stack::start(Database::Sqlite).await;
    stack.generous_tenant("bench").await;
    let embedder = stack.standalone().shared.embedder.clone();
    let sluice = Client::builder(stack.grpc_url())
        .dev_tenant("bench")
        .batch_size(BATCH)
        .wait_timeout(Duration::from_secs(600))
        .build()
        .expect("client");

    println!("{DOCUMENTS} documents of 30–120 words, one chunk each; {ROUNDS} rounds");
    println!(
        "{:>6} {:>16} {:>16} {:>14} {:>8}",
        "round", "embedder docs/s", "pipeline docs/s", "tokens/doc", "ratio"
    );
    let (mut alone, mut piped) = (Vec::new(), Vec::new());
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
        let pipeline_rate = DOCUMENTS as f64 / started.elapsed().as_secs_f64();
        assert!(ended.iter().all(|i| i.state == IngestionState::Indexed));
        println!(
            "{:>6} {:>16.1} {:>16.1} {:>14.0} {:>8.2}",
            round + 1,
            embedder_rate,
            pipeline_rate,
            tokens as f64 / DOCUMENTS as f64,
            pipeline_rate / embedder_rate
        );
        alone.push(embedder_rate);
        piped.push(pipeline_rate);
    }
    let (alone, piped) = (median(alone), median(piped));
    println!(
        "{:>6} {:>16.1} {:>16.1} {:>14} {:>8.2}   (goal ≥ 0.90)",
        "median",
        alone,
        piped,
        "",
        piped / alone
    );
    println!(
        "peak RSS of the standalone process: {:.0} MB",
        peak_rss_mb()
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
    stack.shutdown().await;
}
