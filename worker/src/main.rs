//! `sluice-worker`: one member of the worker consumer group. Uses a Qdrant server; with the
//! embedded store run `sluice-gateway --standalone` instead.

use std::path::PathBuf;

use std::future::IntoFuture;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use serde_json::{json, Map, Value};
use sluice_core::config::{Config, VectorStoreKind};
use sluice_worker::health::{ModelCheck, WorkerHealth};
use sluice_worker::Worker;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(version, about = "Sluice indexing worker")]
struct Args {
    /// TOML configuration file (default: ./sluice.toml when present).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers [kafka.bootstrap_servers].
    #[arg(long)]
    bootstrap_servers: Option<String>,
    /// Unique, stable name of this worker [worker.instance_id].
    #[arg(long)]
    instance_id: Option<String>,
    /// Log as JSON lines [log.format = "json"].
    #[arg(long)]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut overrides = Map::new();
    if let Some(servers) = &args.bootstrap_servers {
        overrides.insert("kafka".into(), json!({ "bootstrap_servers": servers }));
    }
    if let Some(id) = &args.instance_id {
        overrides.insert("worker".into(), json!({ "instance_id": id }));
    }
    if args.log_json {
        overrides.insert("log".into(), json!({ "format": "json" }));
    }
    let config = Config::load(args.config.as_deref(), Value::Object(overrides))?;
    sluice_core::telemetry::init(&config.log, "sluice-worker");
    if config.vector_store.kind == VectorStoreKind::Edge {
        anyhow::bail!(
            "the embedded vector store lives in the gateway's process: run `sluice-gateway --standalone`, or configure a Qdrant server (vector_store.kind = \"qdrant\")"
        );
    }
    let shared = sluice_worker::shared::WorkerShared::open(&config).await?;
    sluice_core::kafka::ensure_topics(&config.kafka).await?;
    let indexer = sluice_worker::indexer_for(
        &config,
        shared.schemas.clone(),
        shared.embedder.clone(),
        shared.store.clone(),
    )?;
    let worker = Worker::new(config.kafka.clone(), config.worker.clone(), indexer);
    let stop = CancellationToken::new();
    let (lag, lag_task) = sluice_core::lag::spawn(
        &config.kafka,
        &config.worker.group_id,
        &config.kafka.documents_topic,
        Duration::from_secs(5),
        stop.clone(),
    )?;
    let health = WorkerHealth {
        store: shared.store.clone(),
        model: ModelCheck::new(shared.embedder.clone()),
        schemas: shared.schemas.clone(),
        assignment: worker.assignment(),
        pause: worker.pause(),
        lag,
    };
    let listener = tokio::net::TcpListener::bind(config.worker.health_listen)
        .await
        .with_context(|| format!("binding {}", config.worker.health_listen))?;
    tracing::info!(health = %listener.local_addr()?, "worker health serving");
    let health_server = tokio::spawn(
        axum::serve(listener, health.router())
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .into_future(),
    );
    let worker = worker.spawn();

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down: finishing the current batch");
    worker.shutdown().await;
    stop.cancel();
    let _ = tokio::join!(health_server, lag_task);
    sluice_core::telemetry::shutdown();
    Ok(())
}
