//! What every Sluice process opens at start, once: the model, the vector store, the database
//! and tenants' schemas. The gateway, the standalone worker and `sluice-worker` all start
//! with [`Shared::open`].

use std::sync::Arc;

use anyhow::Context;
use sea_orm::DatabaseConnection;

use crate::config::Config;
use crate::embed::Embedder;
use crate::schema_registry::builtin::BuiltinRegistry;
use crate::schema_registry::SchemaCatalog;
use crate::vector::VectorStore;

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
        let model = config.model.clone();
        let embedder = tokio::task::spawn_blocking(move || {
            crate::embed::Embedder::load(
                &model.dir,
                crate::embed::EmbedderOptions {
                    max_batch: model.max_batch,
                    ..Default::default()
                },
            )
        })
        .await??;
        let store = crate::vector::open(config, embedder.dimension())
            .await
            .context("vector store")?;
        let db = crate::db::connect(&config.database_url())
            .await
            .context("database")?;
        let schemas =
            crate::schema_registry::open(&config.schemas, &db).context("schema registry")?;
        Ok(Self {
            embedder: Arc::new(embedder),
            store,
            db,
            schemas: schemas.catalog,
            builtin_registry: schemas.builtin,
        })
    }
}
