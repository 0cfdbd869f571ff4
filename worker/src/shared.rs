//! What every Sluice process that embeds opens at start, once: the model, the vector store, the
//! database and tenants' schemas. The gateway, the standalone worker and `sluice-worker` all
//! start with [`Shared::open`]; it lives here because the worker is what needs all of it (the
//! gateway links the worker for `--standalone` and for search's model), while `sluice-admin`,
//! which needs none of it, links neither.

use std::sync::Arc;

use anyhow::Context;
use sea_orm::DatabaseConnection;

use sluice_core::config::Config;
use sluice_core::schema_registry::builtin::BuiltinRegistry;
use sluice_core::schema_registry::SchemaCatalog;
use sluice_core::vector::VectorStore;
use sluice_embed::{Embedder, EmbedderOptions};

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
        sluice_core::schema::limit_decoder_allocations(config.gateway.max_payload_bytes);
        sluice_core::metrics::install(&config.metrics);
        let model = config.model.clone();
        let embedder = tokio::task::spawn_blocking(move || {
            Embedder::load(
                &model.dir,
                EmbedderOptions {
                    max_batch: model.max_batch,
                    ..Default::default()
                },
            )
        })
        .await??;
        let store = sluice_core::vector::open(config, embedder.dimension())
            .await
            .context("vector store")?;
        let db = sluice_core::db::connect(&config.database_url())
            .await
            .context("database")?;
        let schemas =
            sluice_core::schema_registry::open(&config.schemas, &db).context("schema registry")?;
        Ok(Self {
            embedder: Arc::new(embedder),
            store,
            db,
            schemas: schemas.catalog,
            builtin_registry: schemas.builtin,
        })
    }
}
