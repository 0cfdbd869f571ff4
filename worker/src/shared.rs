//! What every Sluice process that embeds opens at start, once: the model, the vector store, the
//! database and tenants' schemas. The gateway and the standalone worker start with
//! [`Shared::open`]; `sluice-worker` with [`WorkerShared::open`], which needs no database when
//! the schemas come from a registry by URL. It lives here because the worker is what needs all
//! of it (the gateway links the worker for `--standalone` and for search's model), while
//! `sluice-admin`, which needs none of it, links neither.

use std::sync::Arc;

use anyhow::Context;
use sea_orm::DatabaseConnection;

use sluice_core::config::Config;
use sluice_core::schema_registry::builtin::BuiltinRegistry;
use sluice_core::schema_registry::SchemaCatalog;
use sluice_core::vector::VectorStore;
use sluice_embed::{Embedder, EmbedderOptions, Precision};

/// What a Sluice process opens at start and its parts share: the model, the vector store, the
/// database and the schema registry. A standalone gateway shares one with its worker.
#[derive(Clone)]
pub struct Shared {
    pub embedder: Arc<Embedder>,
    pub store: Arc<dyn VectorStore>,
    pub db: DatabaseConnection,
    /// Tenants' document schemas (the registry behind a cache).
    pub schemas: Arc<SchemaCatalog>,
    /// The built-in registry, when no external one is configured; its REST API is served on
    /// the gRPC port.
    pub builtin_registry: Option<Arc<BuiltinRegistry>>,
}

impl Shared {
    /// Loads the model, opens the vector store and connects to the database, per `config`.
    pub async fn open(config: &Config) -> anyhow::Result<Self> {
        let (embedder, store) = model_and_store(config).await?;
        let db = sluice_core::db::connect(&config.database_url())
            .await
            .context("database")?;
        let schemas =
            sluice_core::schema_registry::open(&config.schemas, &db).context("schema registry")?;
        Ok(Self {
            embedder,
            store,
            db,
            schemas: schemas.catalog,
            builtin_registry: schemas.builtin,
        })
    }
}

/// What `sluice-worker` opens: the model, the vector store and the schemas. With `schemas.url`
/// set (the gateway's address, or an external registry) it needs no database, so workers run
/// wherever the topics, the store and the registry are reachable; without it the built-in
/// registry is read from the database, as the gateway does.
pub struct WorkerShared {
    pub embedder: Arc<Embedder>,
    pub store: Arc<dyn VectorStore>,
    pub schemas: Arc<SchemaCatalog>,
}

impl WorkerShared {
    pub async fn open(config: &Config) -> anyhow::Result<Self> {
        if config.schemas.url.is_none() {
            let shared = Shared::open(config).await?;
            tracing::info!("schemas from the database (set schemas.url to run without it)");
            return Ok(Self {
                embedder: shared.embedder,
                store: shared.store,
                schemas: shared.schemas,
            });
        }
        let (embedder, store) = model_and_store(config).await?;
        let schemas = sluice_core::schema_registry::open_by_url(&config.schemas)
            .context("schema registry")?;
        Ok(Self {
            embedder,
            store,
            schemas,
        })
    }
}

/// The model (loaded off the async threads) and the vector store, with the process-wide
/// settings they rely on.
async fn model_and_store(config: &Config) -> anyhow::Result<(Arc<Embedder>, Arc<dyn VectorStore>)> {
    sluice_core::schema::limit_decoder_allocations(config.gateway.max_payload_bytes);
    sluice_core::metrics::install(&config.metrics);
    let model = config.model.clone();
    let precision: Precision = model
        .precision
        .parse()
        .map_err(|err| anyhow::anyhow!("model.precision: {err}"))?;
    let embedder = tokio::task::spawn_blocking(move || {
        Embedder::load(
            &model.dir,
            EmbedderOptions {
                max_batch: model.max_batch,
                precision,
                ..Default::default()
            },
        )
    })
    .await??;
    let store = sluice_core::vector::open(config, embedder.dimension())
        .await
        .context("vector store")?;
    Ok((Arc::new(embedder), store))
}
