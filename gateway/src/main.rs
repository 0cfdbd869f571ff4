//! `sluice-gateway`: the gRPC gateway, or with `--standalone` gateway and worker in one process.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use serde_json::{json, Map, Value};
use sluice_core::config::Config;
use sluice_gateway::server::{Gateway, Shared};
use sluice_gateway::standalone::Standalone;

#[derive(Parser, Debug)]
#[command(version, about = "Sluice gRPC ingestion gateway")]
struct Args {
    /// TOML configuration file (default: ./sluice.toml when present).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Run the worker in this process too (required with the embedded vector store).
    #[arg(long)]
    standalone: bool,
    /// gRPC listen address [gateway.listen].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// HTTP /healthz listen address [gateway.health_listen].
    #[arg(long)]
    health_listen: Option<SocketAddr>,
    /// Kafka bootstrap servers [kafka.bootstrap_servers].
    #[arg(long)]
    bootstrap_servers: Option<String>,
    /// Directory for the embedded database and vector store [data_dir].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// DEVELOPMENT ONLY: take the tenant from the x-sluice-tenant header [gateway.dev_tenant_header].
    #[arg(long)]
    dev_tenant_header: bool,
    /// Log as JSON lines [log.format = "json"].
    #[arg(long)]
    log_json: bool,
}

impl Args {
    /// Only the flags given, shaped like the configuration, so they override it.
    fn overrides(&self) -> Value {
        let mut root = Map::new();
        let mut gateway = Map::new();
        if let Some(listen) = self.listen {
            gateway.insert("listen".into(), json!(listen));
        }
        if let Some(listen) = self.health_listen {
            gateway.insert("health_listen".into(), json!(listen));
        }
        if self.dev_tenant_header {
            gateway.insert("dev_tenant_header".into(), json!(true));
        }
        if let Some(servers) = &self.bootstrap_servers {
            root.insert("kafka".into(), json!({ "bootstrap_servers": servers }));
        }
        if let Some(dir) = &self.data_dir {
            root.insert("data_dir".into(), json!(dir));
        }
        if self.log_json {
            root.insert("log".into(), json!({ "format": "json" }));
        }
        root.insert("gateway".into(), Value::Object(gateway));
        Value::Object(root)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = Config::load(args.config.as_deref(), args.overrides())?;
    sluice_core::telemetry::init(&config.log, "sluice-gateway");
    if args.standalone {
        let standalone = Standalone::start(&config).await?;
        shutdown_signal().await;
        tracing::info!("shutting down");
        standalone.shutdown().await;
    } else {
        if config.vector_store.kind == sluice_core::config::VectorStoreKind::Edge {
            anyhow::bail!(
                "the embedded vector store (vector_store.kind = \"edge\") lives in one process: run with --standalone, or configure a Qdrant server (vector_store.kind = \"qdrant\")"
            );
        }
        let shared = Shared::open(&config).await?;
        let gateway = Gateway::start(&config, shared).await?;
        shutdown_signal().await;
        tracing::info!("shutting down");
        gateway.shutdown().await;
    }
    sluice_core::telemetry::shutdown();
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
