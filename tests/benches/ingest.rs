//! Ingest throughput and latency against a local nisshi broker.
//!
//! `cargo bench -p sluice-tests --bench ingest`
//!
//! Starts a broker on loopback and a gateway (no worker, so indexing does not compete for the
//! CPU), then for each concurrency level sends a fixed number of Ingest calls and prints
//! documents/s and the p50/p99 latency of an acknowledged (committed) Ingest. Bounded: a few
//! hundred calls per level.

use std::time::{Duration, Instant};

use sluice_core::proto::ingest_service_client::IngestServiceClient;
use sluice_core::proto::{IngestBatchRequest, IngestRequest};
use sluice_core::tenants::{Quotas, Tenants};
use sluice_gateway::server::{Gateway, Shared};
use sluice_tests::{as_tenant, document, tenant_id, test_config, Broker, Database};

const CALLS_PER_LEVEL: usize = 400;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let broker = Broker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(&broker, dir.path(), Database::Sqlite).await;
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
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", gateway.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let client = IngestServiceClient::new(channel);
    let text = "Sluice benchmark document. ".repeat(40);

    println!(
        "Ingest against nisshi on loopback, {CALLS_PER_LEVEL} calls per level, ~1 KiB documents"
    );
    println!(
        "{:>12} {:>12} {:>10} {:>10} {:>10}",
        "concurrency", "docs/s", "p50 ms", "p99 ms", "max ms"
    );
    for concurrency in [1usize, 8, 32, 128] {
        let started = Instant::now();
        let mut tasks = Vec::new();
        for worker in 0..concurrency {
            let mut client = client.clone();
            let text = text.clone();
            let calls = CALLS_PER_LEVEL / concurrency;
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(calls);
                for i in 0..calls {
                    let request = as_tenant(
                        "bench",
                        IngestRequest {
                            document: Some(document(
                                &format!("c{concurrency}-w{worker}-{i}"),
                                "Bench",
                                &text,
                            )),
                            ..Default::default()
                        },
                    );
                    let t = Instant::now();
                    client.ingest(request).await.expect("ingest");
                    latencies.push(t.elapsed());
                }
                latencies
            }));
        }
        let mut latencies: Vec<Duration> = Vec::new();
        for task in tasks {
            latencies.extend(task.await.unwrap());
        }
        report(&concurrency.to_string(), latencies, started.elapsed(), 1);
    }

    println!();
    println!("IngestBatch, one transaction per call");
    println!(
        "{:>12} {:>12} {:>10} {:>10} {:>10}",
        "batch size", "docs/s", "p50 ms", "p99 ms", "max ms"
    );
    for size in [10usize, 100, 500] {
        let mut client = client.clone();
        let calls = (2000 / size).clamp(4, 40);
        let started = Instant::now();
        let mut latencies = Vec::with_capacity(calls);
        for call in 0..calls {
            let documents = (0..size)
                .map(|i| document(&format!("b{size}-{call}-{i}"), "Bench", &text))
                .collect();
            let t = Instant::now();
            client
                .ingest_batch(as_tenant(
                    "bench",
                    IngestBatchRequest {
                        documents,
                        ..Default::default()
                    },
                ))
                .await
                .expect("batch");
            latencies.push(t.elapsed());
        }
        report(&size.to_string(), latencies, started.elapsed(), size);
    }
    gateway.shutdown().await;
}

fn report(label: &str, mut latencies: Vec<Duration>, elapsed: Duration, docs_per_call: usize) {
    latencies.sort();
    let at = |q: f64| {
        latencies[((latencies.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1000.0
    };
    let docs = latencies.len() * docs_per_call;
    println!(
        "{label:>12} {:>12.1} {:>10.1} {:>10.1} {:>10.1}",
        docs as f64 / elapsed.as_secs_f64(),
        at(0.50),
        at(0.99),
        at(1.0)
    );
}
