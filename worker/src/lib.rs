//! The Sluice worker: turns committed document records into searchable chunks.
//!
//! # Layout
//! - [`indexer`]: the pipeline for one record, as named stages: decode → chunk → embed →
//!   index (or delete). Knows nothing about Kafka.
//! - [`chunk`]: splitting text into chunks measured in the model's own tokens.
//! - [`consumer`]: the Kafka side: a read_committed consumer group member that runs each batch
//!   of records through the indexer and commits their completion events together with the
//!   consumed offsets in one transaction.
//! - [`rebalance`]: the group's revocations, so that a worker never commits records of a
//!   partition it no longer holds.
//! - [`shared`]: what a process opens at start (model, vector store, database, schemas).
//! - [`health`]: `/livez`, `/readyz`, `/healthz` and `/metrics` on the worker's health port,
//!   and the model check and metrics handler the gateway's health port shares.
//!
//! A record is processed at least once, and processing it again changes nothing (point ids are
//! deterministic), so with the transactional commit each ingestion gets exactly one committed
//! completion.

pub mod chunk;
pub mod consumer;
pub mod health;
pub mod indexer;
pub mod rebalance;
pub mod shared;

pub use consumer::{Pause, Worker, WorkerHandle};
pub use indexer::Indexer;
pub use shared::Shared;

use std::sync::Arc;

use sluice_core::config::Config;
use sluice_core::schema_registry::SchemaCatalog;
use sluice_core::vector::VectorStore;
use sluice_embed::Embedder;

use crate::chunk::{Chunker, ChunkerOptions};

/// The indexer as configured: schemas from the registry, the model's own tokenizer for chunk
/// sizes, and the given model and store.
pub fn indexer_for(
    config: &Config,
    schemas: Arc<SchemaCatalog>,
    embedder: Arc<Embedder>,
    store: Arc<dyn VectorStore>,
) -> anyhow::Result<Indexer> {
    let chunker = Chunker::new(
        embedder.tokenizer(),
        ChunkerOptions {
            max_tokens: config.chunking.max_tokens,
            overlap_tokens: config.chunking.overlap_tokens,
            max_document_tokens: config.chunking.max_document_tokens,
        },
    )?;
    Ok(Indexer::new(schemas, Arc::new(chunker), embedder, store))
}
