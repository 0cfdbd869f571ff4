//! `/metrics` on the health port: what the gateway and its worker count, checked against what
//! a tenant did. (Stacks in this test binary share one process-wide recorder, so each test
//! looks only at its own tenant and its own consumer group.)

use std::collections::BTreeSet;
use std::time::Duration;

use sluice_core::proto::{document::Payload, Document, IngestBatchRequest, IngestRequest};
use sluice_tests::{as_tenant, document, ended, eventually, http_get, metric_sum, Database, Stack};

/// The value of the series `name{labels}` (labels as written, in order), or 0.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_a_tenant_did() {
    const TENANT: &str = "metered";
    const DOCUMENTS: usize = 60;
    let group = format!("workers-{}", uuid::Uuid::new_v4().simple());
    let worker_group = group.clone();
    let stack = Stack::start_configured(Database::Sqlite, move |config| {
        config.worker.group_id = worker_group;
        // What the test counts on: three partitions.
        config.kafka.documents_partitions = 3;
    })
    .await;
    let health = stack.standalone().gateway.health_addr;
    let url = format!("http://{health}/metrics");
    assert_eq!(http_get(&format!("http://{health}/livez")).await.0, 200);
    assert_eq!(http_get(&format!("http://{health}/readyz")).await.0, 200);
    let mut ingest = stack.ingest_client().await;

    let documents: Vec<Document> = (0..DOCUMENTS)
        .map(|i| {
            let id = format!("m-{i}");
            document(&id, &id, "Prometheus scrapes what Sluice counts.")
        })
        .collect();
    let accepted = ingest
        .ingest_batch(as_tenant(
            TENANT,
            IngestBatchRequest {
                documents,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .ingestions;
    // One refusal: a payload that is not a document.
    let refused = ingest
        .ingest(as_tenant(
            TENANT,
            IngestRequest {
                document: Some(Document {
                    document_id: "bad".into(),
                    payload: Some(Payload::AvroJson("{\"nope\": 1}".into())),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await;
    assert!(refused.is_err());
    for ingestion in &accepted {
        ended(
            &ingest,
            TENANT,
            &ingestion.ingestion_id,
            Duration::from_secs(120),
        )
        .await;
    }

    let tenant = format!("tenant=\"{TENANT}\"");
    let text = eventually("the worker's counters", Duration::from_secs(10), || {
        let url = url.clone();
        let tenant = tenant.clone();
        async move {
            let (code, text) = http_get(&url).await;
            assert_eq!(code, 200);
            (value(
                &text,
                &format!("sluice_worker_documents_indexed_total{{{tenant}}}"),
            ) == DOCUMENTS as f64)
                .then_some(text)
        }
    })
    .await;
    assert_eq!(
        value(
            &text,
            &format!("sluice_gateway_documents_accepted_total{{{tenant}}}")
        ),
        DOCUMENTS as f64
    );
    assert!(
        value(
            &text,
            &format!("sluice_gateway_bytes_accepted_total{{{tenant}}}")
        ) > 0.0
    );
    assert!(
        metric_sum(
            &text,
            "sluice_grpc_server_requests_total",
            &[
                "method=\"sluice.v1.IngestService/IngestBatch\"",
                "code=\"OK\""
            ]
        ) >= 1.0
    );
    assert!(
        metric_sum(
            &text,
            "sluice_grpc_server_duration_seconds_count",
            &[
                "method=\"sluice.v1.IngestService/Ingest\"",
                "code=\"INVALID_ARGUMENT\""
            ]
        ) >= 1.0
    );
    assert!(
        metric_sum(
            &text,
            "sluice_gateway_refusals_total",
            &["reason=\"invalid\""]
        ) >= 1.0
    );
    assert!(
        metric_sum(
            &text,
            "sluice_gateway_transaction_duration_seconds_count",
            &[]
        ) >= 1.0
    );
    assert!(metric_sum(&text, "sluice_worker_embedding_duration_seconds_count", &[]) >= 1.0);
    assert!(
        metric_sum(
            &text,
            "sluice_worker_ingest_to_completed_seconds_count",
            &[]
        ) >= DOCUMENTS as f64
    );

    // The workers' lag on every partition of the documents topic, back to 0 once all is done.
    let group_label = format!("group=\"{group}\"");
    let text = eventually("the lag back to 0", Duration::from_secs(30), || {
        let url = url.clone();
        let group_label = group_label.clone();
        async move {
            let (_, text) = http_get(&url).await;
            let partitions = text
                .lines()
                .filter(|l| {
                    l.starts_with("sluice_consumer_lag_offsets{") && l.contains(&group_label)
                })
                .count();
            (partitions == 3
                && metric_sum(&text, "sluice_consumer_lag_offsets", &[&group_label]) == 0.0)
                .then_some(text)
        }
    })
    .await;
    let names: BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("sluice_"))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    println!("{} metric series names: {names:?}", names.len());
    stack.shutdown().await;
}

/// A real Prometheus, scraping a stack every second on loopback; stopped with the test.
struct Prometheus {
    port: u16,
    _process: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn scraping(target: std::net::SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: sluice\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = sluice_tests::free_port();
        let process = tokio::process::Command::new(sluice_tests::prometheus())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start prometheus");
        let ready = format!("http://127.0.0.1:{port}/-/ready");
        eventually("Prometheus to start", Duration::from_secs(30), || {
            let ready = ready.clone();
            async move { (http_get(&ready).await.0 == 200).then_some(()) }
        })
        .await;
        Self {
            port,
            _process: process,
            _dir: dir,
        }
    }

    /// An instant query through the HTTP API; the first result's value, if any.
    async fn query(&self, promql: &str) -> Option<f64> {
        let output = tokio::process::Command::new("curl")
            .args(["-s", "--max-time", "10", "-G"])
            .arg(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .arg("--data-urlencode")
            .arg(format!("query={promql}"))
            .output()
            .await
            .expect("curl");
        let body: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

/// Through a real Prometheus' query API: the workers' lag rises while the worker is stopped
/// and falls to 0 once it is back, and documents_indexed_total matches what was ingested.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_the_lag_rise_and_fall() {
    const TENANT: &str = "scraped";
    const DOCUMENTS: usize = 40;
    let group = format!("workers-{}", uuid::Uuid::new_v4().simple());
    let worker_group = group.clone();
    let mut stack = Stack::start_configured(Database::Sqlite, move |config| {
        config.worker.group_id = worker_group;
        // What the test counts on: three partitions.
        config.kafka.documents_partitions = 3;
    })
    .await;
    let prometheus = Prometheus::scraping(stack.standalone().gateway.health_addr).await;
    let lag = format!("sum(sluice_consumer_lag_offsets{{group=\"{group}\"}})");
    let lag_seconds = format!("max(sluice_consumer_lag_seconds{{group=\"{group}\"}})");
    let indexed = format!("sum(sluice_worker_documents_indexed_total{{tenant=\"{TENANT}\"}})");

    stack.standalone_mut().stop_worker().await;
    let mut ingest = stack.ingest_client().await;
    let documents: Vec<Document> = (0..DOCUMENTS)
        .map(|i| {
            let id = format!("p-{i}");
            document(&id, &id, "Lag is what the workers have not done yet.")
        })
        .collect();
    let stopped = std::time::Instant::now();
    ingest
        .ingest_batch(as_tenant(
            TENANT,
            IngestBatchRequest {
                documents,
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let risen = eventually("the lag to rise", Duration::from_secs(60), || {
        let (prometheus, lag) = (&prometheus, &lag);
        async move {
            prometheus
                .query(lag)
                .await
                .filter(|&n| n >= DOCUMENTS as f64)
        }
    })
    .await;
    // Its age grows while nothing consumes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let old = prometheus.query(&lag_seconds).await.unwrap_or(0.0);
    assert!(old >= 1.0, "lag seconds {old}");
    println!(
        "worker stopped: Prometheus saw lag {risen} offsets after {:?}, {old} s old",
        stopped.elapsed()
    );

    stack.standalone_mut().start_worker().unwrap();
    let restarted = std::time::Instant::now();
    eventually("the lag back to 0", Duration::from_secs(120), || {
        let (prometheus, lag, indexed) = (&prometheus, &lag, &indexed);
        async move {
            let drained = prometheus.query(lag).await == Some(0.0);
            let counted = prometheus.query(indexed).await == Some(DOCUMENTS as f64);
            (drained && counted).then_some(())
        }
    })
    .await;
    println!(
        "worker back: lag 0 and {DOCUMENTS} documents_indexed_total in Prometheus {:?} later",
        restarted.elapsed()
    );
    stack.shutdown().await;
}

/// Workers beyond the partition count hold nothing and say so (`/readyz` 503 "idle"); the
/// others are ready and report their partitions and lag. When a holder leaves, its partitions
/// move to the idle one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_workers_say_they_are_idle_and_take_over_when_one_leaves() {
    use sluice_worker::health::{ModelCheck, WorkerHealth};
    use tokio_util::sync::CancellationToken;

    let group = format!("workers-{}", uuid::Uuid::new_v4().simple());
    let worker_group = group.clone();
    let mut stack = Stack::start_configured(Database::Sqlite, move |config| {
        config.worker.group_id = worker_group;
        // What the test counts on: three partitions.
        config.kafka.documents_partitions = 3;
    })
    .await;
    // Four workers of our own for the three partitions.
    stack.standalone_mut().stop_worker().await;
    let stop = CancellationToken::new();
    let shared = stack.standalone().shared.clone();
    let mut workers = Vec::new();
    let mut health = Vec::new();
    let mut servers = Vec::new();
    for i in 0..4 {
        let worker = stack.worker(&format!("extra-{i}"));
        let (lag, lag_task) = sluice_core::lag::spawn(
            &stack.config.kafka,
            &group,
            &stack.config.kafka.documents_topic,
            Duration::from_secs(1),
            stop.clone(),
        )
        .unwrap();
        let stop_serving = stop.clone();
        let router = WorkerHealth {
            store: shared.store.clone(),
            model: ModelCheck::new(shared.embedder.clone()),
            schemas: shared.schemas.clone(),
            assignment: worker.assignment(),
            pause: worker.pause(),
            lag,
        }
        .router();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        health.push(listener.local_addr().unwrap());
        servers.push(lag_task);
        servers.push(tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(stop_serving.cancelled_owned())
                .await;
        }));
        workers.push(Some(worker.spawn()));
    }

    /// Each worker's partitions, from its /healthz; and its /readyz code.
    async fn holdings(health: &[std::net::SocketAddr]) -> Vec<(Vec<i64>, u16)> {
        let mut out = Vec::new();
        for addr in health {
            let (_, body) = http_get(&format!("http://{addr}/healthz")).await;
            let report: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let partitions = report["assigned_partitions"]
                .as_array()
                .map(|a| a.iter().filter_map(|p| p.as_i64()).collect())
                .unwrap_or_default();
            out.push((
                partitions,
                http_get(&format!("http://{addr}/readyz")).await.0,
            ));
        }
        out
    }
    /// Every partition held exactly once.
    fn settled(holdings: &[(Vec<i64>, u16)]) -> bool {
        let mut all: Vec<i64> = holdings.iter().flat_map(|(p, _)| p.clone()).collect();
        all.sort_unstable();
        all == [0, 1, 2]
    }

    let started = std::time::Instant::now();
    let first = eventually(
        "four workers to share three partitions",
        Duration::from_secs(60),
        || {
            let health = health.clone();
            async move {
                let now = holdings(&health).await;
                settled(&now).then_some(now)
            }
        },
    )
    .await;
    println!(
        "4 workers, 3 partitions, after {:?}: {first:?}",
        started.elapsed()
    );
    let idle: Vec<usize> = (0..4).filter(|&i| first[i].0.is_empty()).collect();
    assert_eq!(idle.len(), 1, "{first:?}");
    for (i, (partitions, ready)) in first.iter().enumerate() {
        let expected = if partitions.is_empty() { 503 } else { 200 };
        assert_eq!(*ready, expected, "worker {i}: {first:?}");
    }
    let (_, body) = http_get(&format!("http://{}/readyz", health[idle[0]])).await;
    assert!(body.contains("idle"), "{body}");

    // A holder leaves: its partitions go to the idle one.
    let leaving = (0..4).find(|i| !idle.contains(i)).unwrap();
    let left = std::time::Instant::now();
    workers[leaving].take().unwrap().shutdown().await;
    let remaining: Vec<std::net::SocketAddr> = (0..4)
        .filter(|&i| i != leaving)
        .map(|i| health[i])
        .collect();
    let after = eventually("the partitions to move", Duration::from_secs(60), || {
        let remaining = remaining.clone();
        async move {
            let now = holdings(&remaining).await;
            (settled(&now) && now.iter().all(|(p, ready)| !p.is_empty() && *ready == 200))
                .then_some(now)
        }
    })
    .await;
    println!(
        "worker {leaving} left; {:?} later: {after:?}",
        left.elapsed()
    );

    for worker in workers.into_iter().flatten() {
        worker.shutdown().await;
    }
    stop.cancel();
    for server in servers {
        let _ = server.await;
    }
    // The store goes before the stack removes its directory.
    drop(shared);
    stack.shutdown().await;
}
